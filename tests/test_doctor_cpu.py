"""`workbench doctor` says which of the CPU features the kernels use this machine has and lacks."""

from __future__ import annotations

from workbench.doctor import check_kernels, cpu_features

EPYC_AVX2 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 fma bmi2"
SAPPHIRE = "avx2 fma f16c avx512f avx512_bf16 avx512_vnni avx_vnni amx_bf16"
GRAVITON = "fp asimd evtstrm aes pmull sha1 sha2 crc32 asimdhp asimddp i8mm bf16"


def test_an_avx2_cpu_is_said_to_lack_the_avx512_paths() -> None:
    assert cpu_features(EPYC_AVX2) == "avx2 fma f16c; lacks avx512f avx512_bf16 avx512_vnni avx_vnni"


def test_a_cpu_with_every_x86_feature_lacks_nothing() -> None:
    assert cpu_features(SAPPHIRE) == "avx2 fma f16c avx512f avx512_bf16 avx512_vnni avx_vnni"


def test_an_arm_cpu_is_described_by_its_own_features() -> None:
    assert cpu_features(GRAVITON) == "asimd asimdhp asimddp bf16 i8mm; lacks sve"


def test_a_cpu_without_vector_extensions_says_so() -> None:
    assert cpu_features("fpu sse sse2").startswith("no vector extensions; lacks avx2")


def test_the_kernels_check_names_this_machines_cpu_features() -> None:
    check = check_kernels()
    assert check.ok and "(CPU: " in check.detail and check.detail.rstrip(")").split("CPU: ")[1]
