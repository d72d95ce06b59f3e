"""The block store sits between sessions/ and engine/+core/: it needs no model, no session, no CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvstore import BlockSpace


def test_the_block_store_imports_none_of_engine_sessions_or_workbench() -> None:
    code = (
        "import json, sys; import kvstore, kvstore.open; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out))
    assert not loaded & {"engine", "sessions", "workbench", "indexer", "textual"}


def test_a_block_space_is_a_hashable_value() -> None:
    a = BlockSpace("ab" * 32, "float32", layers=2, kv_heads=1, head_dim=8)
    b = BlockSpace("ab" * 32, "float32", 2, 1, 8)
    assert a == b and len({a, b}) == 1


def test_a_block_space_without_identity_or_with_no_layers_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="identity"):
        BlockSpace("", "float32", 2, 1, 8)
    with pytest.raises(ValueError, match="layers"):
        BlockSpace("ab" * 32, "float32", 0, 1, 8)
