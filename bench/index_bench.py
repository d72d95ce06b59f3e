"""Code index benchmark on a library the project did not write (default: `click` from the venv).

    python -m bench.index_bench [--lib click] [--quick] [--write]

Measures, in one run and beside the machine's limits:
- initial indexing throughput (files/s, chunks/s) next to the encoder's raw batch throughput;
- save-to-searchable latency of one-file edits with the watcher running (p50 / p95);
- VSIM latency and recall@10 against an exact scan (TRUTH);
- retrieval quality: each query is a docstring's first line, the docstrings are stripped from the indexed
  copy, and the target is the chunk holding the documented function's `def` line. MRR@10 and recall@10
  for vector-only, lexical-only and hybrid (plus a small sweep of the fusion parameters).
`--write` replaces the "## Index" section of docs/benchmarks.md with the tables.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench.private_redis import start_redis
from bench.report import write_section
from indexer import Index, search
from indexer.embed import Encoder
from indexer.index import shared_encoder
from indexer.watch import Watcher

SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


NOTES = [
    "How to read it:",
    "",
    "- Indexing is the encoder: all-MiniLM-L6-v2 costs ~21 MFLOP per token in its linear layers and code "
    "chunks mostly fill the 256-token window, so a chunk is ~5 GFLOP. Indexing tokens/s equals the raw "
    "batch rate (ratio ~1): scanning, chunking, BM25 postings and Redis writes are not visible beside it. "
    "The GEMM share is below 100% because of attention, GELU and layer norms (elementwise numpy passes).",
    "- The machine is shared by several helpers (load average 6-10 on 2 cores during these runs); with two "
    "OpenBLAS threads under that contention the encoder ran 3-8x slower (1.0 chunk/s in one run), hence "
    "OPENBLAS_NUM_THREADS=1 for this benchmark. An unchanged repo costs one hash per file.",
    "- Save-to-searchable = 50 ms debounce + read, hash, chunk the file + embed only its changed chunks "
    "(usually one) + one MULTI/EXEC (VREM/VADD/VSETATTR, postings, manifest).",
    '- Lexical alone is weakest on these natural-language queries (code rarely says "Returns ..."), '
    "vector alone is better, and reciprocal-rank fusion beats both on MRR@10 and recall@10. The fusion "
    "constants were picked on this query set (sweep above); check another library with "
    "`--lib jinja2 --quick`.",
]


# ---- the corpus: a library copy with docstrings stripped, and queries made from them -------------------
def strip_docstrings(source: str) -> tuple[str, list[tuple[str, str]]]:
    """(source without docstrings, [(function qualname, docstring first line)])."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    drop: set[int] = set()
    replace: dict[int, str] = {}
    docs: list[tuple[str, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                first, last = body[0].lineno, body[0].end_lineno or body[0].lineno
                indent = lines[first - 1][: len(lines[first - 1]) - len(lines[first - 1].lstrip())]
                drop.update(range(first, last + 1))
                if len(body) == 1:
                    replace[first] = f"{indent}...\n"
                head = next((ln.strip() for ln in value.value.strip().splitlines() if ln.strip()), "")
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and prefix:
                    docs.append((prefix, head))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                visit(child, f"{prefix}.{child.name}" if prefix else child.name)

    visit(tree, "")
    out = [replace.get(i, "") if i in drop else line for i, line in enumerate(lines, start=1)]
    return "".join(out), docs


def def_lines(source: str) -> dict[str, int]:
    """qualname -> line of its `def` in `source`."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}.{child.name}" if prefix else child.name
                found.setdefault(name, child.lineno)
                visit(child, name)

    visit(ast.parse(source), "")
    return found


def make_corpus(lib: str, dest: Path, max_files: int | None) -> list[tuple[str, str, int]]:
    """Copy the library's .py files into `dest` without docstrings; return (query, relpath, def line)."""
    src_root = SITE / lib
    files = sorted(p for p in src_root.rglob("*.py") if "__pycache__" not in p.parts)[:max_files]
    queries: list[tuple[str, str, int]] = []
    for path in files:
        rel = path.relative_to(src_root).as_posix()
        stripped, docs = strip_docstrings(path.read_text(encoding="utf-8"))
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(stripped, encoding="utf-8")
        where = def_lines(stripped)
        for qualname, head in docs:
            if len(head.split()) >= 4 and qualname in where and not head.startswith((":", ">>>", "..")):
                queries.append((head, rel, where[qualname]))
    seen: set[str] = set()
    return [q for q in queries if not (q[0] in seen or seen.add(q[0]))]  # type: ignore[func-returns-value]


# ---- measurements -------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def encoder_throughput(ix: Index, sample: int) -> dict[str, float]:
    texts = []
    for _, records in ix.iter_chunk_records():
        texts += [f"{r['symbol']}\n{r['text']}" if r["symbol"] else r["text"] for r in records]
    texts = random.Random(0).sample(texts, min(sample, len(texts)))
    tokens = sum(min(ix.encoder.token_count(t), ix.encoder.max_seq_length) for t in texts)
    t0 = time.perf_counter()
    ix.encoder.encode(texts)
    dt = time.perf_counter() - t0
    return {"texts_s": len(texts) / dt, "tokens_s": tokens / dt, "texts": len(texts)}


def encoded_tokens(ix: Index) -> int:
    """Tokens the encoder saw while indexing (texts truncated at max_seq_length, as it does)."""
    total = 0
    for _, records in ix.iter_chunk_records():
        for r in records:
            text = f"{r['symbol']}\n{r['text']}" if r["symbol"] else r["text"]
            total += min(ix.encoder.token_count(text), ix.encoder.max_seq_length)
    return total


def flops_per_token(encoder: Encoder) -> float:
    """Multiply-adds x 2 of one token through the encoder's linear layers (attention scores excluded)."""
    c = encoder.config
    return 2.0 * c.num_hidden_layers * (4 * c.hidden_size**2 + 2 * c.hidden_size * c.intermediate_size)


def edit_latency(ix: Index, edits: int) -> list[float]:
    """Append a uniquely named function to a file; time until lexical search returns it."""
    files = sorted(ix.store.manifests())[:10]
    watcher = Watcher(ix, initial_update=False).start()
    latencies = []
    try:
        for i in range(edits):
            assert watcher.wait_idle(60)
            name = f"probe_{i}_{uuid.uuid4().hex[:8]}"
            path = ix.root / files[i % len(files)]
            text = path.read_text() + f"\n\ndef {name}(value):\n    return value * {i}\n"
            t0 = time.perf_counter()
            path.write_text(text)
            while True:
                hits = ix.search(name, k=1, mode="lexical")
                if hits and hits[0].symbol == name:
                    break
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError(f"edit {i} never became searchable")
                time.sleep(0.002)
            latencies.append(time.perf_counter() - t0)
    finally:
        watcher.stop()
    return latencies


def vsim_quality(ix: Index, vectors: np.ndarray) -> dict[str, float]:
    fast, exact, recalls = [], [], []
    for vec in vectors:
        blob = vec.astype("<f4").tobytes()
        t0 = time.perf_counter()
        approx = ix.redis.execute_command("VSIM", ix.store.vset, "FP32", blob, "COUNT", 10)
        t1 = time.perf_counter()
        truth = ix.redis.execute_command("VSIM", ix.store.vset, "FP32", blob, "COUNT", 10, "TRUTH")
        t2 = time.perf_counter()
        fast.append(t1 - t0)
        exact.append(t2 - t1)
        recalls.append(len(set(approx) & set(truth)) / max(1, len(truth)))
    return {"p50_ms": pct(fast, 50) * 1e3, "p95_ms": pct(fast, 95) * 1e3,
            "truth_p50_ms": pct(exact, 50) * 1e3, "recall10": float(np.mean(recalls))}  # fmt: skip


def targets_by_query(ix: Index, queries: list[tuple[str, str, int]]) -> list[set[str]]:
    spans: dict[str, list[tuple[int, int, str]]] = {}
    for elements, records in ix.iter_chunk_records():
        for e, r in zip(elements, records, strict=True):
            spans.setdefault(r["path"], []).append((r["start"], r["end"], e))
    return [{e for s, end, e in spans.get(rel, []) if s <= line <= end} for _, rel, line in queries]


def quality(ix: Index, queries: list[tuple[str, str, int]]) -> tuple[dict[str, dict[str, float]], list[str]]:
    targets = targets_by_query(ix, queries)
    vec_rank, lex_rank = [], []
    for query, _, _ in queries:
        vec_rank.append([e for e, _ in search.vector_ranking(ix, query, 50, None, None, None)])
        lex_rank.append([e for e, _ in search.lexical_ranking(ix, query, 50, None, None)])

    def score(ranked: list[list[str]]) -> dict[str, float]:
        rr, hit = [], []
        for ranking, target in zip(ranked, targets, strict=True):
            pos = next((i for i, e in enumerate(ranking[:10]) if e in target), None)
            rr.append(0.0 if pos is None else 1.0 / (pos + 1))
            hit.append(pos is not None)
        return {"mrr10": float(np.mean(rr)), "recall10": float(np.mean(hit))}

    def fused(k: int, wv: float, wl: float) -> list[list[str]]:
        old = search.RRF_K
        search.RRF_K = k
        try:
            return [[e for e, _ in search.fuse([[(x, 0.0) for x in v], [(x, 0.0) for x in lx]], [wv, wl])]
                    for v, lx in zip(vec_rank, lex_rank, strict=True)]  # fmt: skip
        finally:
            search.RRF_K = old

    results = {
        "vector-only": score(vec_rank),
        "lexical-only": score(lex_rank),
        f"hybrid (RRF k={search.RRF_K}, w={search.VECTOR_WEIGHT:g}/{search.LEXICAL_WEIGHT:g})": score(
            fused(search.RRF_K, search.VECTOR_WEIGHT, search.LEXICAL_WEIGHT)
        ),
    }
    sweep = ["| RRF k | vector w | lexical w | MRR@10 | recall@10 |", "| ---: | ---: | ---: | ---: | ---: |"]
    for k in (5, 10, 30, 60):
        for wv, wl in ((1.0, 1.0), (1.5, 1.0), (2.0, 1.0), (1.0, 1.5)):
            s = score(fused(k, wv, wl))
            sweep.append(f"| {k} | {wv:g} | {wl:g} | {s['mrr10']:.3f} | {s['recall10']:.3f} |")
    return results, sweep


# ---- the run ------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> str:
    from bench.machine import limits_table

    work = Path(tempfile.mkdtemp(prefix="wb-ixb-"))
    proc, r = start_redis(work, "--appendonly", "yes", "--appendfsync", "everysec")  # the embedded settings
    try:
        repo = work / args.lib
        queries = make_corpus(args.lib, repo, 12 if args.quick else None)
        queries = random.Random(0).sample(queries, min(len(queries), 60 if args.quick else 300))
        encoder = shared_encoder()
        ix = Index.open(repo, r, encoder=encoder)
        t0 = time.perf_counter()
        ix.update()
        index_s = time.perf_counter() - t0
        files, chunks = ix.store.counts()
        raw = encoder_throughput(ix, 64 if args.quick else 192)
        index_tokens = encoded_tokens(ix)
        t0 = time.perf_counter()
        again = ix.update()
        noop_s = time.perf_counter() - t0
        qvec = encoder.encode([q for q, _, _ in queries])
        vs = vsim_quality(ix, qvec)
        results, sweep = quality(ix, queries)
        lat = edit_latency(ix, 10 if args.quick else 30)
        from bench.machine import gemm_gflops

        gemm = gemm_gflops()
        limits = limits_table(redis_client=r)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)

    flops = flops_per_token(encoder)
    enc_gflops = raw["tokens_s"] * flops / 1e9
    blas_threads = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    lines = [
        "## Index",
        "",
        f"`python -m bench.index_bench --lib {args.lib}{' --quick' if args.quick else ''}` — the source of "
        f"`{args.lib}` from the venv (not ours), docstrings stripped; all-MiniLM-L6-v2 on our encoder "
        f"({encoder.ops.name} backend, OPENBLAS_NUM_THREADS={blas_threads}), "
        "a private redis-server with AOF everysec.",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| files / chunks indexed | {files} / {chunks} |",
        f"| initial index | {index_s:.1f} s = {files / index_s:.2f} files/s, "
        f"{chunks / index_s:.1f} chunks/s |",
        f"| encoder raw batch throughput (same run, {raw['texts']:.0f} chunks) | "
        f"{raw['texts_s']:.1f} chunks/s, "
        f"{raw['tokens_s']:,.0f} tokens/s |",
        f"| indexing tokens/s ÷ raw encoder tokens/s | "
        f"{index_tokens / index_s:,.0f} / {raw['tokens_s']:,.0f} = "
        f"{index_tokens / index_s / raw['tokens_s']:.2f} |",
        f"| encoder compute: {flops / 1e6:.0f} MFLOP/token x tokens/s | {enc_gflops:.1f} GFLOP/s = "
        f"{enc_gflops / gemm:.0%} of the measured GEMM limit ({gemm:.1f}) |",
        f"| second pass, nothing changed ({again.files_unchanged} files hashed) | {noop_s * 1e3:.0f} ms, "
        f"{again.chunks_embedded} embedded |",
        f"| save-to-searchable, one-file edit, watcher running ({len(lat)} edits) | "
        f"p50 {pct(lat, 50) * 1e3:.0f} ms, "
        f"p95 {pct(lat, 95) * 1e3:.0f} ms (targets 300 / 1000) |",
        f"| VSIM COUNT 10 latency | p50 {vs['p50_ms']:.2f} ms, p95 {vs['p95_ms']:.2f} ms "
        f"(TRUTH scan p50 {vs['truth_p50_ms']:.2f} ms) |",
        f"| VSIM recall@10 vs TRUTH ({len(qvec)} queries) | {vs['recall10']:.3f} (target 0.95) |",
        "",
        f"Retrieval quality, {len(queries)} docstring first-line queries, target = the chunk holding the "
        "function's `def` line:",
        "",
        "| ranking | MRR@10 | recall@10 |",
        "| --- | ---: | ---: |",
        *[f"| {name} | {s['mrr10']:.3f} | {s['recall10']:.3f} |" for name, s in results.items()],
        "",
        "Fusion sweep (same rankings):",
        "",
        *sweep,
        "",
        *NOTES,
        "",
        "Machine limits measured in the same run:",
        "",
        limits,
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", default="click", help="a package in the venv's site-packages")
    parser.add_argument("--quick", action="store_true", help="12 files, 60 queries, 10 edits")
    parser.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    args = parser.parse_args(argv)
    section = run(args)
    print(section)
    if args.write:
        write_section(section)


if __name__ == "__main__":
    main()
