"""Confinement: every path a tool touches resolves (symlinks followed) inside the repository root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.confine import Confinement, PathRefused, is_secret


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.py").write_text("x = 1\n")
    (root / ".git" / "refs").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("not yours\n")
    return root


def test_relative_and_absolute_paths_inside_the_root_resolve(repo: Path) -> None:
    c = Confinement(repo)
    assert c.resolve("src/a.py") == repo.resolve() / "src" / "a.py"
    assert c.resolve(str(repo / "src" / "a.py")) == repo.resolve() / "src" / "a.py"
    assert c.resolve("src/../src/a.py") == repo.resolve() / "src" / "a.py"
    assert c.resolve("src/new.py", write=True) == repo.resolve() / "src" / "new.py"


@pytest.mark.parametrize("path", ["../outside/x.txt", "src/../../outside/x.txt", "/etc/passwd", "~"])
def test_paths_leaving_the_root_are_refused(repo: Path, path: str) -> None:
    with pytest.raises(PathRefused, match="outside the repository"):
        Confinement(repo).resolve(path)


def test_a_symlinked_file_pointing_outside_is_refused(repo: Path) -> None:
    os.symlink(repo.parent / "outside" / "secret.txt", repo / "src" / "link.txt")
    with pytest.raises(PathRefused, match="outside"):
        Confinement(repo).resolve("src/link.txt")


def test_a_symlinked_directory_pointing_outside_is_refused_for_files_below_it(repo: Path) -> None:
    os.symlink(repo.parent / "outside", repo / "escape")
    c = Confinement(repo)
    with pytest.raises(PathRefused, match="outside"):
        c.resolve("escape/secret.txt")
    with pytest.raises(PathRefused, match="outside"):
        c.resolve("escape/new-file.txt", write=True)  # does not exist yet: still caught


def test_a_dangling_symlink_to_outside_cannot_be_written_through(repo: Path) -> None:
    os.symlink(repo.parent / "outside" / "created-by-tool.txt", repo / "dangling")
    with pytest.raises(PathRefused, match="outside"):
        Confinement(repo).resolve("dangling", write=True)


def test_a_symlink_inside_the_root_is_followed(repo: Path) -> None:
    os.symlink(repo / "src" / "a.py", repo / "alias.py")
    assert Confinement(repo).resolve("alias.py") == repo.resolve() / "src" / "a.py"


def test_the_root_itself_may_be_reached_through_a_symlink(tmp_path: Path, repo: Path) -> None:
    os.symlink(repo, tmp_path / "repo-link")
    c = Confinement(tmp_path / "repo-link")
    assert c.root == repo.resolve()
    assert c.resolve("src/a.py") == repo.resolve() / "src" / "a.py"


@pytest.mark.parametrize("path", [".git/HEAD", ".git/hooks/pre-commit", "src/../.git/config", ".GIT/config",
                                  "vendor/sub/.git/config"])  # fmt: skip
def test_git_directories_are_never_written(repo: Path, path: str) -> None:
    with pytest.raises(PathRefused, match=r"\.git"):
        Confinement(repo).resolve(path, write=True)


def test_git_directory_may_be_read(repo: Path) -> None:
    assert Confinement(repo).resolve(".git/HEAD").name == "HEAD"


def test_a_symlink_into_git_cannot_be_written_through(repo: Path) -> None:
    os.symlink(repo / ".git" / "HEAD", repo / "innocent.txt")
    with pytest.raises(PathRefused, match=r"\.git"):
        Confinement(repo).resolve("innocent.txt", write=True)


@pytest.mark.parametrize("bad", ["", "   ", "a\x00b"])
def test_empty_or_nul_paths_are_refused_with_a_reason(repo: Path, bad: str) -> None:
    with pytest.raises(PathRefused, match=r"non-empty|NUL"):
        Confinement(repo).resolve(bad)


def test_a_missing_root_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Confinement(tmp_path / "nope")


@pytest.mark.parametrize(
    ("path", "secret"),
    [(".env", True), ("config/.env.production", True), ("deploy/server.pem", True), ("keys/id_rsa", True),
     ("keys/id_ed25519.pub", True), ("home/.ssh/config", True), ("app/credentials.json", True),
     (".netrc", True), ("tls/site.key", True), (".env.example", False), ("src/env.py", False),
     ("docs/keys.md", False), ("src/a.py", False)],
)  # fmt: skip
def test_secrets_files_are_recognised_by_name(path: str, secret: bool) -> None:
    assert is_secret(path) is secret
