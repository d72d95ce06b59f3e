"""Lossy block dtypes: int8 (and float16) blocks of a tiny model keep greedy decoding on track."""

from __future__ import annotations

import json

import pytest

from bench.kv_quality import dtype_agreement
from tests.kv_helpers import history, tiny_model


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_lossy_block_dtypes_agree_with_float32_over_256_tokens(dtype: str) -> None:
    model = tiny_model(seed=0)
    result = dtype_agreement(model, history(200, seed=3), dtype, n=256)
    print(json.dumps(result))  # the numbers quoted in docs/benchmarks.md ("KV blocks")
    assert result["teacher_forced_agreement"] >= 0.95
    assert result["max_logit_error_rel"] <= (0.01 if dtype == "float16" else 0.05)
    assert result["first_divergence"] >= 1  # the stored float32 logits make the first token exact
