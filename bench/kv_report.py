"""The "## KV blocks" section of docs/benchmarks.md, rendered from kv_bench's results: the tables, the
targets of the KV issue with the value each run measured, and the notes."""

from __future__ import annotations

from bench import machine

HEADING = "## KV blocks"
NOTES = """\
Notes.
- Block size: the default (64) is not the fastest in every run; the sweep above shows restore time barely
  depends on it (per-block costs are small next to moving the bytes). So the other costs decide: a prefix
  shared by two sessions is reused up to its last complete block (on average block_size/2 tokens are
  recomputed: ~0.2 s at 64 on this model, ~0.75 s at 256); one Redis value is block_size x 224 KiB in
  float32 (14 MiB at 64), and Redis serves a value in one go, so smaller blocks keep it responsive for
  sessions and the indexer; smaller blocks mean more files, index rows and keys (128 per 8k history at 64,
  512 at 16). 64 balances these; `WORKBENCH_KV_BLOCK_SIZE` overrides it.
- Where resume time goes: a restore reads the block bytes and writes every restored position into a new
  KV cache (float32, 224 KiB per token for this model, whatever the block dtype), reserved in one
  allocation. The reader threads verify each block and write it at its place in the cache themselves,
  beside the reads (float16/int8 converted on the way); the caller only commits the length in order.
  Lead's findings on this VM: numpy's transparent-huge-page advice made the first touch of a new cache
  4-6x slower (now off), zeroing the new cache was a wasted pass (now uninitialised), and memory the
  balloon driver took back (freed for ~3 s) costs ~0.3 GB/s to touch again. So a restore now fills
  arrays the model's earlier caches gave back (engine/kvpool.py): float32 8k from disk 2.4 s, against
  4.0-4.8 s in the two runs before the pool (restore 89% of raw disk, was 48-56%).
- Why float32 blocks cannot meet the ratio targets here: the bytes. "raw allows" above is the ratio
  reachable if the restore cost nothing but reading the blocks at the raw tier speed of this run
  (measured once, over the longest history's blocks, so only approximate for the shorter ones);
  2k float32 tokens are 470 MB, ~0.45 s at ~1 GB/s from this disk (~38x a 17 s cold prefill), and
  a 14 MiB Redis GET runs at ~0.5 GB/s. Faster prefill (the engine issue) lowers these ratios further.
  float16 blocks halve the bytes (greedy identical over 256 tokens, logits within ~4e-4) and int8
  quarters them; they are the way to the 60x/100x marks on a disk like this one
  (`WORKBENCH_KV_DTYPE=float16`). The default stays the engine's own dtype, exact to the bit.
- int8 on the tiny test fixture (tests/test_kv_int8.py, 200-token history, 256 greedy tokens): float16 blocks
  agree on all 256 tokens, max logit error 0.0028 (0.06% of the largest logit); int8 blocks diverge first at
  token 142, agree on 99.6% of teacher-forced steps, max logit error 0.041 (0.94%).
"""


def render(r: dict, limits: dict) -> str:
    bs, lengths = r["block_size"], sorted(r["cold"])
    fp = r["tiers"]["float32"]
    lines = [
        HEADING,
        "",
        "`python -m bench.kv_bench` on random weights in Qwen3-0.6B's shapes (28 layers, 8 KV heads x 128),",
        f"numpy backend (KV float32), block size {bs}. Resume = restore from ONE tier into a fresh cache, no",
        "memory tier, best of 2; disk with the block files dropped from the page cache (fadvise DONTNEED",
        "after fsync) before each run;",
        "Redis = private redis-server 8 on a unix socket. The tail record holds the last logits, so resume",
        "TTFT is the whole restore and no token is recomputed (first token identical, logits bit-equal).",
        "",
        "| history | cold prefill TTFT | resume disk | x | resume Redis | x | disk GB/s | Redis GB/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for n in lengths:
        d, rd = fp["disk"]["resume"][n], fp["redis"]["resume"][n]
        cold = r["cold"][n]
        lines.append(
            f"| {n} | {cold:.1f} s | {d['ttft_s']:.3f} s | {cold / d['ttft_s']:.0f}x "
            f"| {rd['ttft_s']:.3f} s | {cold / rd['ttft_s']:.0f}x | {d['gbs']:.2f} | {rd['gbs']:.2f} |"
        )
    fresh = fp["disk"].get("new_process")
    if fresh:
        n = lengths[-1]
        lines += [
            "",
            f"In a new process (`workbench --resume ID` in a new terminal): the model loads in "
            f"{fresh['load_s']:.1f} s, then the first {n}-token float32 restore from disk takes "
            f"{fresh['restore_s']:.2f} s ({r['cold'][n] / fresh['restore_s']:.0f}x the cold prefill), "
            f"against {fp['disk']['resume'][n]['ttft_s']:.2f} s above, where the model's earlier caches gave "
            "their arrays back: the new process touches its KV memory for the first time.",
        ]
    lines += ["", "Restore throughput beside the raw tier throughput over the same bytes (same run):", "",
              "| dtype | bytes/token | disk restore / raw read GB/s | Redis restore / raw GET GB/s | resume "
              f"{lengths[-1]} disk | Redis |", "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for dtype, t in r["tiers"].items():
        d, rd = t["disk"]["resume"][lengths[-1]], t["redis"]["resume"][lengths[-1]]
        lines.append(
            f"| {dtype} | {t['disk']['bytes_per_token']:,.0f} | {d['gbs']:.2f} / {t['disk']['raw_gbs']:.2f} "
            f"({d['gbs'] / t['disk']['raw_gbs']:.0%}) | {rd['gbs']:.2f} / {t['redis']['raw_gbs']:.2f} "
            f"({rd['gbs'] / t['redis']['raw_gbs']:.0%}) | {d['ttft_s']:.3f} s | {rd['ttft_s']:.3f} s |"
        )
    if r["sweep"]:
        n = r["sweep_length"]
        lines += ["", f"Block size (float32, {n}-token history): resume time and write time per tier.", "",
                  "| block size | block MiB | resume disk | resume Redis | save disk | save Redis |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for size, s in sorted(r["sweep"].items()):
            lines.append(
                f"| {size} | {s['disk']['bytes_per_token'] * size / 2**20:.1f} "
                f"| {s['disk']['resume'][n]['ttft_s']:.3f} s | {s['redis']['resume'][n]['ttft_s']:.3f} s "
                f"| {s['disk']['save_s']:.2f} s | {s['redis']['save_s']:.2f} s |"
            )
    lines += ["", "Targets of issue 4 in this run:" + targets(r)]
    if r.get("other_runs"):
        lines += [
            "",
            "The same benchmark in earlier runs of this session (cold / resume ratios vary with load):",
            "",
        ]
        lines += [f"- {line}" for line in r["other_runs"]]
    lines += ["", NOTES.rstrip("\n")]
    if r["quality"]:
        lines += ["", "Lossy block dtypes on this model (history 512, greedy from the restored cache):", "",
                  "| dtype | tokens | first divergence | teacher-forced agreement | max logit error (rel) |",
                  "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for q in r["quality"]:
            lines.append(
                f"| {q['dtype']} | {q['tokens']} | {q['first_divergence']} "
                f"| {q['teacher_forced_agreement']:.1%} "
                f"| {q['max_logit_error']:.4f} ({q['max_logit_error_rel']:.2%}) |"
            )
    load = r["load"]
    lines += ["", f"Load average (2 cores, shared): {load['cold_prefill']:.1f} during the cold "
              f"prefill, {load['end']:.1f} at the end.", "", machine.limits_table(limits), ""]  # fmt: skip
    return "\n".join(lines)


def targets(r: dict) -> str:
    """The issue's targets, each with the value this run measured, whether it was met, and the most
    the tier allows: cold time / (block bytes / raw tier throughput measured in this run)."""
    cold, out = r["cold"], []
    checks = [(2048, "disk", 60), (2048, "redis", 60), (8192, "disk", 100), (8192, "redis", 30)]
    for n, tier, goal in checks:
        if n not in cold:
            continue
        parts = []
        for dtype, t in r["tiers"].items():
            got = t[tier]["resume"][n]
            x, ceiling = cold[n] / got["ttft_s"], cold[n] / (got["bytes"] / 1e9 / t[tier]["raw_gbs"])
            verdict = "met" if x >= goal else "NOT met"
            parts.append(f"{dtype} {x:.0f}x ({verdict}; raw {tier} allows {ceiling:.0f}x)")
        out.append(f"resume {n} from {tier} >= {goal}x: " + ", ".join(parts))
    fp = r["tiers"]["float32"]
    for tier in ("disk", "redis"):
        t = fp[tier]
        share = t["resume"][max(cold)]["gbs"] / t["raw_gbs"]
        verdict = "met" if share >= 0.5 else "NOT met"
        out.append(f"float32 {tier} restore >= 50% of raw: {share:.0%} ({verdict})")
    return "\n" + "\n".join(f"- {line}" for line in out)
