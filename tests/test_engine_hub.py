"""Model names: repo ids resolved from a Hugging Face cache laid out on disk exactly as the hub client
writes it (blobs/, snapshots/<commit>/ symlinks, refs/main), `workbench models list|pull`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from engine import hub
from engine.errors import ModelNotFoundError
from workbench import cli

CONFIG = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 8}


def add_snapshot(
    cache: Path, repo_id: str, commit: str, files: dict[str, bytes], ref: str | None = "main"
) -> Path:
    """Write files the way huggingface_hub does: content in blobs/<sha256>, symlinks in snapshots/."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def model_files(config: dict = CONFIG, weights: bytes = b"\0" * 1000) -> dict[str, bytes]:
    return {"config.json": json.dumps(config).encode(), "model.safetensors": weights}


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return cache


def test_repo_id_resolves_to_the_snapshot_refs_main_points_at(hf_cache):
    old = add_snapshot(hf_cache, "Qwen/Qwen3-0.6B", "a" * 40, model_files(), ref=None)
    new = add_snapshot(hf_cache, "Qwen/Qwen3-0.6B", "b" * 40, model_files())
    os.utime(old, (2e9, 2e9))  # the older commit is the newest on disk: refs/main must still win
    assert hub.resolve_model_path("Qwen/Qwen3-0.6B") == new
    assert hub.resolve_model_path("Qwen/Qwen3-0.6B@" + "a" * 40) == old
    assert json.loads((new / "config.json").read_text())["model_type"] == "qwen3"


def test_without_refs_the_newest_complete_snapshot_is_used(hf_cache):
    add_snapshot(hf_cache, "org/m", "1" * 40, model_files(), ref=None)
    newer = add_snapshot(hf_cache, "org/m", "2" * 40, model_files(), ref=None)
    os.utime(newer, (2e9, 2e9))
    add_snapshot(hf_cache, "org/m", "3" * 40, {"README.md": b"no config"}, ref=None)
    assert hub.resolve_model_path("org/m") == newer


def test_hf_hub_cache_wins_over_hf_home(hf_cache, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    snapshot = add_snapshot(other, "org/m", "c" * 40, model_files())
    monkeypatch.setenv("HF_HUB_CACHE", str(other))
    assert hub.hf_cache_dir() == other
    assert hub.resolve_model_path("org/m") == snapshot


def test_missing_model_says_how_to_get_it(hf_cache):
    with pytest.raises(ModelNotFoundError, match=r"workbench models pull Qwen/Qwen3-0\.6B") as err:
        hub.resolve_model_path(hub.DEFAULT_MODEL)
    assert str(hf_cache) in str(err.value)
    with pytest.raises(ModelNotFoundError, match="neither a directory nor a Hugging Face repo id"):
        hub.resolve_model_path("not-a-repo-id")


def test_incomplete_download_is_reported_as_such(hf_cache):
    add_snapshot(hf_cache, "org/partial", "d" * 40, {"tokenizer.json": b"{}"})
    with pytest.raises(ModelNotFoundError, match=r"no complete snapshot.*workbench models pull org/partial"):
        hub.resolve_model_path("org/partial")


def test_workbench_models_dir_is_searched(hf_cache, workbench_env):
    local = workbench_env / "models" / "me" / "finetune"
    local.mkdir(parents=True)
    (local / "config.json").write_text(json.dumps(CONFIG))
    assert hub.resolve_model_path("me/finetune") == local


def test_list_local_reports_size_architecture_and_source(hf_cache, workbench_env):
    add_snapshot(hf_cache, "Qwen/Qwen3-0.6B", "e" * 40, model_files(weights=b"w" * 5000))
    quant = {**CONFIG, "quantization": {"group_size": 64, "bits": 4}}
    local = workbench_env / "models" / "mlx-community--tiny-4bit"
    local.mkdir(parents=True)
    (local / "config.json").write_text(json.dumps(quant))
    (local / "model.safetensors").write_bytes(b"q" * 300)
    add_snapshot(hf_cache, "org/broken", "f" * 40, {"README.md": b"x"})  # no config: not listed

    models = {m.name: m for m in hub.list_local()}
    assert set(models) == {"Qwen/Qwen3-0.6B", "mlx-community/tiny-4bit"}
    qwen = models["Qwen/Qwen3-0.6B"]
    assert (qwen.source, qwen.architecture, qwen.model_type) == ("hf-cache", "Qwen3ForCausalLM", "qwen3")
    assert qwen.size_bytes == 5000 + len(json.dumps(CONFIG))
    tiny = models["mlx-community/tiny-4bit"]
    assert (tiny.source, tiny.quantization) == ("workbench", "4-bit")
    assert tiny.size_bytes == 300 + len(json.dumps(quant))


def test_models_list_cli(hf_cache, capsys):
    assert cli.main(["models", "list"]) == 0
    assert "workbench models pull Qwen/Qwen3-0.6B" in capsys.readouterr().out
    add_snapshot(hf_cache, "Qwen/Qwen3-0.6B", "a" * 40, model_files())
    assert cli.main(["models", "list", "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["name"] == "Qwen/Qwen3-0.6B" and entry["architecture"] == "Qwen3ForCausalLM"
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "Qwen/Qwen3-0.6B (default)" in out and "Qwen3ForCausalLM" in out and "hf-cache" in out


def safetensors_header(tensors: dict[str, tuple[str, list[int], int]]) -> bytes:
    """A safetensors file whose header lists `tensors` (name -> dtype, shape, bytes) and zero data."""
    header, offset = {"__metadata__": {"format": "mlx"}}, 0
    for name, (dtype, shape, size) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + b"\0" * offset


def test_models_list_shows_weight_format_and_bytes(hf_cache, workbench_env, capsys):
    bf16 = {"w": ("BF16", [64, 32], 4096), "norm": ("F32", [32], 128)}
    add_snapshot(hf_cache, "Qwen/Qwen3-0.6B", "a" * 40, model_files(weights=safetensors_header(bf16)))
    q4 = {"w": ("U32", [64, 4], 1024), "w.scales": ("BF16", [64, 1], 128), "w.biases": ("BF16", [64, 1], 128)}
    local = workbench_env / "models" / "mlx-community--tiny-4bit"
    local.mkdir(parents=True)
    (local / "config.json").write_text(json.dumps({**CONFIG, "quantization": {"group_size": 32, "bits": 4}}))
    (local / "model.safetensors").write_bytes(safetensors_header(q4))
    models = {m.name: m for m in hub.list_local()}
    assert (models["Qwen/Qwen3-0.6B"].weight_format, models["Qwen/Qwen3-0.6B"].weight_bytes) == ("bf16", 4224)
    tiny = models["mlx-community/tiny-4bit"]
    assert (tiny.weight_format, tiny.weight_bytes) == ("q4 g32", 1280)
    assert cli.main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "ARCHITECTURE", "WEIGHTS", "SIZE"]
    assert "bf16 4.1 KB" in lines[1] and "q4 g32 1.2 KB" in lines[2]


def test_models_pull_fails_cleanly_when_the_hub_is_unreachable(hf_cache, capsys):
    # conftest sets HF_HUB_OFFLINE=1: the hub client refuses the network, as on a machine without it.
    assert cli.main(["models", "pull", "Qwen/Qwen3-0.6B"]) == 1
    err = capsys.readouterr().err
    assert "workbench: cannot download Qwen/Qwen3-0.6B" in err and "unreachable" in err
    assert "Traceback" not in err
    assert cli.main(["models", "pull", "no-slash"]) == 3


def test_pull_against_a_refused_endpoint(hf_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(hub.HubUnavailableError, match=r"127\.0\.0\.1:9"):
        hub.pull("org/m", endpoint="http://127.0.0.1:9")


def test_load_model_by_repo_id(hf_cache, tiny_model):
    fixture = tiny_model("qwen3")
    files = {p.name: p.read_bytes() for p in fixture.path.iterdir() if p.is_file()}
    snapshot = add_snapshot(hf_cache, "tiny/qwen3", "9" * 40, files)
    import engine

    model = engine.load_model("tiny/qwen3", backend="numpy")
    assert Path(model.path) == snapshot
    assert model.tokenizer.identity == hashlib.sha256(files["tokenizer.json"]).hexdigest()


def test_a_pull_can_report_its_bytes_instead_of_drawing_bars(capsys: pytest.CaptureFixture[str]) -> None:
    """The TUI's pull: huggingface_hub builds its bars from our class (as snapshot_download does, with
    its own factory); only the snapshot's byte bar reports, and nothing reaches the terminal."""
    import logging

    from huggingface_hub.utils.tqdm import _create_progress_bar

    from engine.hub import SNAPSHOT_BAR, reporting_bars

    seen: list[tuple[int, int]] = []
    bars = reporting_bars(lambda done, total: seen.append((done, total)))
    written = _create_progress_bar(cls=bars, log_level=logging.INFO, name=SNAPSHOT_BAR, total=0, unit="B")
    transfer = _create_progress_bar(cls=bars, log_level=logging.INFO, name="transfer", total=0)
    written.total = (written.total or 0) + 1000  # each file's size is added as its download starts
    written.update(400)
    transfer.update(999)
    written.update(600)
    written.close()
    assert seen == [(400, 1000), (1000, 1000)]
    assert capsys.readouterr().err == ""
