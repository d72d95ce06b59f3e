"""Model names: Hugging Face repo ids resolved from the local HF cache, downloads, and what is local.

Resolution never touches the network. The HF cache is found as huggingface_hub finds it (HF_HUB_CACHE,
HUGGINGFACE_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub) and read
in its own layout: models--<org>--<name>/refs/<rev> holds a commit hash, snapshots/<hash>/ the files.
Models can also live in $WORKBENCH_HOME/models/<org>/<name> (or <org>--<name>).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import EngineError, ModelNotFoundError

DEFAULT_MODEL = "Qwen/Qwen3-0.6B"

# What `pull` downloads: weights, configs, tokenizer and template files; never other formats' weights.
PULL_PATTERNS = ["*.safetensors", "*.json", "*.jinja", "tokenizer*", "*.txt", "*.model", "*.tiktoken"]


class HubUnavailableError(EngineError):
    """The Hugging Face Hub could not be reached (offline, blocked, or refused) for a download."""


@dataclass(frozen=True)
class LocalModel:
    name: str  # repo id ("Qwen/Qwen3-0.6B") or directory name
    path: Path  # the directory holding config.json
    source: str  # "hf-cache" | "workbench"
    size_bytes: int
    architecture: str  # config.json architectures[0], or "?" when unreadable
    model_type: str
    quantization: str  # "" or e.g. "4-bit" (MLX-quantized checkpoints)
    weight_format: str = "?"  # "bf16" | "f16" | "f32" | "q4 g64" (bits, group size) | "?" (unreadable)
    weight_bytes: int = 0  # bytes of the safetensors tensors (0 when unreadable)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "source": self.source,
            "size_bytes": self.size_bytes,
            "architecture": self.architecture,
            "model_type": self.model_type,
            "quantization": self.quantization,
            "weight_format": self.weight_format,
            "weight_bytes": self.weight_bytes,
        }


def hf_cache_dir() -> Path:
    """The HF hub cache directory, by the same environment rules as huggingface_hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def workbench_models_dir() -> Path:
    """$WORKBENCH_HOME/models (engine does not import core.paths; same rule, no directory created)."""
    home = os.environ.get("WORKBENCH_HOME")
    if home:
        return Path(home).expanduser() / "models"
    import platformdirs

    return Path(platformdirs.user_data_dir("workbench", appauthor=False)) / "models"


def is_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _repo_folder(repo_id: str) -> Path:
    return hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def _snapshot(repo_dir: Path, revision: str = "main") -> Path | None:
    """The snapshot directory refs/<revision> points at; without refs, the newest complete snapshot."""
    ref = repo_dir / "refs" / revision
    snapshots = repo_dir / "snapshots"
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        candidate = snapshots / commit
        return candidate if (candidate / "config.json").is_file() else None
    if (snapshots / revision / "config.json").is_file():  # a commit hash given as the revision
        return snapshots / revision
    if not snapshots.is_dir():
        return None
    complete = [d for d in snapshots.iterdir() if (d / "config.json").is_file()]
    return max(complete, key=lambda d: d.stat().st_mtime) if complete else None


def resolve_model_path(name: str) -> Path:
    """The local directory of a model given as a directory or a repo id ("org/name[@revision]").

    Raises ModelNotFoundError saying how to get the model when nothing local matches.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    repo_id, _, revision = name.partition("@")
    if is_repo_id(repo_id):
        repo_dir = _repo_folder(repo_id)
        snapshot = _snapshot(repo_dir, revision or "main") if repo_dir.is_dir() else None
        if snapshot is not None:
            return snapshot
        org, model = repo_id.split("/")
        for local in (workbench_models_dir() / org / model, workbench_models_dir() / f"{org}--{model}"):
            if (local / "config.json").is_file():
                return local
        if repo_dir.is_dir():
            raise ModelNotFoundError(
                f"{repo_id} is in the Hugging Face cache ({repo_dir}) but has no complete snapshot"
                f"{' for revision ' + revision if revision else ''} (no config.json); "
                f"re-download it with `workbench models pull {repo_id}`"
            )
        raise ModelNotFoundError(
            f"model {repo_id} is not downloaded (looked in the Hugging Face cache {hf_cache_dir()} and in "
            f"{workbench_models_dir()}); get it with `workbench models pull {repo_id}`"
        )
    raise ModelNotFoundError(
        f"model {name!r} is neither a directory nor a Hugging Face repo id (org/name); "
        f"pass a model directory, or a repo id such as {DEFAULT_MODEL}"
    )


def pull(
    repo_id: str,
    revision: str | None = None,
    endpoint: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Download a repo's weights, configs and tokenizer into the HF cache; returns the snapshot path.

    Shows huggingface_hub's progress bars, or with `progress` none: it is called with (bytes written,
    bytes expected) instead (a TUI draws its own bar; a bar on stderr would tear its screen). Raises
    HubUnavailableError when the hub cannot be reached and ModelNotFoundError when the repo does not
    exist or is gated.
    """
    if not is_repo_id(repo_id):
        raise ModelNotFoundError(f"{repo_id!r} is not a Hugging Face repo id (expected org/name)")
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=PULL_PATTERNS,
            cache_dir=hf_cache_dir(),
            endpoint=endpoint,
            **({"tqdm_class": reporting_bars(progress)} if progress else {}),
        )
    except (
        hf_errors.RepositoryNotFoundError,
        hf_errors.GatedRepoError,
        hf_errors.RevisionNotFoundError,
    ) as exc:
        raise ModelNotFoundError(
            f"{repo_id}: {type(exc).__name__} from the Hugging Face Hub ({_first_line(exc)})"
        ) from None
    except hf_errors.LocalEntryNotFoundError:
        raise HubUnavailableError(
            f"cannot download {repo_id}: the Hugging Face Hub ({endpoint or _default_endpoint()}) "
            "is unreachable "
            "and the model is not in the local cache; check the network (or HF_HUB_OFFLINE), or copy the "
            f"model directory into {workbench_models_dir() / repo_id}"
        ) from None
    except (OSError, hf_errors.HfHubHTTPError) as exc:
        raise HubUnavailableError(f"downloading {repo_id} failed: {_first_line(exc)}") from None
    return Path(path)


SNAPSHOT_BAR = "huggingface_hub.snapshot_download"  # the bar of bytes written, over all files


def reporting_bars(progress: Callable[[int, int], None]) -> type:
    """A tqdm class for snapshot_download that draws nothing and reports the snapshot's bytes."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Reporting(hf_tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.reports = kwargs.get("name") == SNAPSHOT_BAR
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.done = 0

        def update(self, n: float | None = 1) -> bool | None:
            self.done += int(n or 0)
            if self.reports:
                progress(self.done, int(self.total or 0))
            return super().update(n)

    return Reporting


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _default_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def list_local() -> list[LocalModel]:
    """Models in the HF cache (those with a complete snapshot) and in $WORKBENCH_HOME/models."""
    found: list[LocalModel] = []
    cache = hf_cache_dir()
    if cache.is_dir():
        for repo_dir in sorted(cache.glob("models--*")):
            snapshot = _snapshot(repo_dir)
            if snapshot is None:
                continue
            repo_id = repo_dir.name[len("models--") :].replace("--", "/", 1)
            found.append(_describe(repo_id, snapshot, "hf-cache"))
    models_dir = workbench_models_dir()
    if models_dir.is_dir():
        for config in sorted(models_dir.glob("*/config.json")) + sorted(models_dir.glob("*/*/config.json")):
            directory = config.parent
            name = str(directory.relative_to(models_dir)).replace("--", "/", 1)
            found.append(_describe(name, directory, "workbench"))
    return found


def _describe(name: str, directory: Path, source: str) -> LocalModel:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    architectures = config.get("architectures") or ["?"]
    quant = config.get("quantization") or config.get("quantization_config") or {}
    bits = quant.get("bits") if isinstance(quant, dict) else None
    dtype_bytes = _tensor_bytes(directory)
    if bits and isinstance(quant, dict):
        weight_format = f"q{bits} g{quant.get('group_size', '?')}"
    else:
        main = max(dtype_bytes, key=dtype_bytes.__getitem__, default="?")
        weight_format = {"BF16": "bf16", "F16": "f16", "F32": "f32"}.get(main, main.lower())
    return LocalModel(
        name=name,
        path=directory,
        source=source,
        size_bytes=_size(directory),
        architecture=str(architectures[0]),
        model_type=str(config.get("model_type", "?")),
        quantization=f"{bits}-bit" if bits else "",
        weight_format=weight_format,
        weight_bytes=sum(dtype_bytes.values()),
    )


def _tensor_bytes(directory: Path) -> dict[str, int]:
    """Bytes of the tensors in the directory's *.safetensors by dtype, from their headers only; the
    files that are not readable safetensors count nothing."""
    totals: dict[str, int] = {}
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with path.open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size <= path.stat().st_size - 8:
                    continue
                header = json.loads(fh.read(size))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(header, dict):
            continue
        for name, entry in header.items():
            if name == "__metadata__" or not isinstance(entry, dict):
                continue
            try:
                begin, end = entry["data_offsets"]
                totals[str(entry["dtype"])] = totals.get(str(entry["dtype"]), 0) + int(end) - int(begin)
            except (KeyError, TypeError, ValueError):  # not a tensor entry: counts nothing
                continue
    return totals


def _size(directory: Path) -> int:
    """Bytes of the files in `directory`, following the HF cache's symlinks into blobs/ once each."""
    seen: set[Path] = set()
    total = 0
    for entry in directory.rglob("*"):
        try:
            real = entry.resolve()
            if real in seen or not real.is_file():
                continue
            seen.add(real)
            total += real.stat().st_size
        except OSError:
            continue
    return total
