"""An installed Workbench (pipx install ., uv tool install .) carries every file its packages read at run
time: the TUI's stylesheet, the C kernels compiled on first use, the themes."""

from __future__ import annotations

import fnmatch
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _package_data() -> dict[str, list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["setuptools"]["package-data"]


def _tracked_data_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    packages = ("core", "workbench", "engine", "kvstore", "indexer", "sessions", "agent", "serve", "themes")
    files = [Path(line) for line in listed.stdout.splitlines()]
    return [f for f in files if len(f.parts) > 1 and f.parts[0] in packages and f.suffix != ".py"]


def test_every_non_python_file_in_a_package_is_package_data() -> None:
    patterns = _package_data()
    missing = []
    for path in _tracked_data_files():
        package = ".".join(path.parent.parts)
        if not any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns.get(package, [])):
            missing.append(str(path))
    assert not missing, f"not in [tool.setuptools.package-data] of pyproject.toml: {missing}"


def test_the_kernels_and_the_stylesheet_are_among_them() -> None:
    data = {str(p) for p in _tracked_data_files()}
    assert {"engine/backends/kernels.c", "engine/backends/kernels.h", "workbench/tui/app.tcss"} <= data
