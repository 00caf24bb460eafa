"""Finding the checkpoint: a local folder, the Hugging Face cache, or a download.

Only weights, configs and the tokenizer are fetched (never the repository's Python files: the
model is implemented natively, no remote code runs). The cache location follows huggingface_hub
(``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``) and is read from the
environment at call time.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ixcdoc.config import DEFAULT_MODEL_ID
from ixcdoc.errors import UsageError, WeightsError

ENV_MODEL = "IXCDOC_MODEL"
# What a checkpoint needs: config/tokenizer JSON, weights, the SentencePiece model. No *.py.
ALLOW_PATTERNS = ("*.json", "*.bin", "*.safetensors", "tokenizer.model")
IGNORE_PATTERNS = ("*.py", "*.pyc")

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_BAD_IN_ID = ("--", "..")  # huggingface_hub refuses these inside an id
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "true", "yes", "on"}

Progress = Callable[[str, float, float | None], None]


def hub_cache_dir() -> Path:
    """The huggingface_hub cache folder, honouring HF_HUB_CACHE and HF_HOME at call time."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _not_available(model_id: str, *, downloading: bool = False) -> WeightsError:
    if downloading:  # telling someone who runs `ixcdoc download` to run it would help nobody
        why = (
            "HF_HUB_OFFLINE is set"
            if _env_offline()
            else "the hub cannot be reached from this machine"
        )
        return WeightsError(
            f"cannot download {model_id}: {why}; download it where the hub is reachable and "
            f"copy the cache folder ({hub_cache_dir()}) here, or pass --model PATH to a "
            "checkpoint folder"
        )
    return WeightsError(
        f"model {model_id} is not in the local cache and the hub is unreachable; run "
        "`ixcdoc download` on a machine with internet access, or pass --model PATH"
    )


def _hub_errors() -> dict[str, type[BaseException]]:
    """huggingface_hub's error classes (their module moved between releases)."""
    try:
        from huggingface_hub import errors as mod
    except ImportError:  # pragma: no cover - huggingface_hub < 0.23
        from huggingface_hub import utils as mod  # type: ignore[no-redef]
    names = (
        "LocalEntryNotFoundError",
        "IncompleteSnapshotError",
        "OfflineModeIsEnabled",
        "RepositoryNotFoundError",
        "GatedRepoError",
        "RevisionNotFoundError",
        "HfHubHTTPError",
        "HFValidationError",
    )
    found: dict[str, type[BaseException]] = {}
    for name in names:
        cls = getattr(mod, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found[name] = cls
    return found


def _looks_like_path(model: str) -> bool:
    """Anything but a plain ``owner/name`` hub id is taken for a folder path."""
    return model.startswith((".", "/", "~")) or not _REPO_ID.match(model)


def _check_local_dir(path: Path) -> Path:
    if not path.exists():
        raise WeightsError(f"{path}: no such checkpoint folder")
    if not path.is_dir():
        raise WeightsError(f"{path}: not a directory (pass a checkpoint folder or a hub id)")
    if not (path / "config.json").is_file():
        raise WeightsError(f"{path}: no config.json in this folder; it is not a checkpoint")
    return path


def _cached_snapshot(model_id: str, revision: str | None) -> Path | None:
    """The cached snapshot folder of model_id, or None when it is not (fully) cached."""
    from huggingface_hub import snapshot_download

    errors = _hub_errors()
    missing = tuple(
        errors[n]
        for n in ("LocalEntryNotFoundError", "IncompleteSnapshotError", "OfflineModeIsEnabled")
        if n in errors
    )
    try:
        folder = snapshot_download(
            model_id,
            revision=revision,
            cache_dir=hub_cache_dir(),
            local_files_only=True,
            allow_patterns=list(ALLOW_PATTERNS),
            ignore_patterns=list(IGNORE_PATTERNS),
        )
    except missing:
        return None
    except FileNotFoundError:
        return None
    path = Path(str(folder))
    return path if (path / "config.json").is_file() else None


WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def missing_files(path: Path) -> list[str]:
    """Files a checkpoint folder still lacks: config, tokenizer, weights or shards of its index."""
    missing = [name for name in ("config.json", "tokenizer.model") if not (path / name).is_file()]
    for index in WEIGHT_INDEXES:
        if (path / index).is_file():
            try:
                weight_map = json.loads((path / index).read_text(encoding="utf-8"))["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return [*missing, f"{index} (unreadable)"]
            return missing + [s for s in shards if not (path / s).is_file()]
    if not any((path / name).is_file() for name in SINGLE_WEIGHTS):
        missing.append("weights (*.safetensors or *.bin)")
    return missing


def resolve_model(
    model: str | Path | None = None,
    *,
    revision: str | None = None,
    offline: bool | None = None,
    download: bool = True,
    progress: Progress | None = None,
) -> Path:
    """The local folder of a checkpoint: a path as is, or a hub id from the cache (or fetched).

    ``model`` None means $IXCDOC_MODEL, else the official 4KHD id. An existing folder wins over a
    hub id of the same spelling. A hub id that is not (fully) cached is downloaded when the hub is
    reachable and ``download`` is true (a cut download resumes); offline (``offline=True`` or
    HF_HUB_OFFLINE=1) it is a WeightsError that says how to get the weights.
    """
    if model is None:
        model = os.environ.get(ENV_MODEL) or DEFAULT_MODEL_ID
    if isinstance(model, Path):
        return _check_local_dir(model.expanduser())
    text = str(model).strip()
    if not text:
        raise WeightsError("empty model name; pass a checkpoint folder or a hub id")
    local = Path(text).expanduser()
    if local.exists():
        return _check_local_dir(local)
    if _looks_like_path(text):
        raise WeightsError(f"{text}: no such checkpoint folder (and not a hub id like owner/name)")

    cached = _cached_snapshot(text, revision)
    lacking = missing_files(cached) if cached is not None else []
    if cached is not None and not lacking:
        return cached
    is_offline = _env_offline() if offline is None else offline
    if is_offline:
        if cached is not None:  # a download that was cut short
            raise WeightsError(
                f"model {text} is only partly in the local cache ({cached}: missing "
                f"{', '.join(lacking)}) and the hub is unreachable; run `ixcdoc download` on a "
                "machine with internet access, or pass --model PATH"
            )
        raise _not_available(text)
    if not download:
        raise WeightsError(
            f"model {text} is not in the local cache; run `ixcdoc download {text}` first, "
            "or pass --model PATH"
        )
    return download_model(text, revision=revision, progress=progress)


def check_hub_id(model_id: str) -> str:
    """Return model_id if it is a hub id like owner/name; UsageError (one line) otherwise."""
    text = str(model_id)
    if text.strip() and Path(text).expanduser().exists():
        raise UsageError(
            f"{text} is a local folder, not a hub id: there is nothing to download; "
            f"use it as --model {text}"
        )
    if not _REPO_ID.match(text) or any(bad in text for bad in _BAD_IN_ID) or len(text) > 96:
        raise UsageError(f"{text!r} is not a hub id; expected owner/name, e.g. {DEFAULT_MODEL_ID}")
    return text


def _progress_tqdm(progress: Progress) -> type:
    """A tqdm class that draws nothing and reports every update to progress(desc, n, total)."""
    from tqdm.auto import tqdm

    class CallbackTqdm(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)  # huggingface_hub's own tqdm takes a name; tqdm does not
            kwargs["file"] = io.StringIO()
            kwargs["disable"] = False
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            progress(str(self.desc or ""), float(self.n), None if not self.total else self.total)
            return shown

    return CallbackTqdm


def download_model(
    model_id: str, *, revision: str | None = None, progress: Progress | None = None
) -> Path:
    """Fetch the weights, configs and tokenizer of model_id into the HF cache; return the folder.

    progress, when given, is called as progress(description, done, total) instead of drawing
    huggingface_hub's own progress bars (which go to stderr). A malformed id or a local folder
    is a UsageError, before anything touches the network.
    """
    check_hub_id(model_id)
    from huggingface_hub import snapshot_download

    errors = _hub_errors()
    kwargs: dict[str, Any] = {
        "revision": revision,
        "cache_dir": hub_cache_dir(),
        "allow_patterns": list(ALLOW_PATTERNS),
        "ignore_patterns": list(IGNORE_PATTERNS),
    }
    if progress is not None:
        kwargs["tqdm_class"] = _progress_tqdm(progress)
    if _env_offline():
        raise _not_available(model_id, downloading=True)

    def caught(*names: str) -> tuple[type[BaseException], ...]:
        return tuple(errors[n] for n in names if n in errors)

    try:
        folder = snapshot_download(model_id, **kwargs)
    except caught("GatedRepoError") as e:
        raise WeightsError(
            f"model {model_id} is gated on the hub: accept its terms first ({_first_line(e)})"
        ) from None
    except caught("RepositoryNotFoundError") as e:
        raise WeightsError(
            f"model {model_id} does not exist on the hub ({_first_line(e)})"
        ) from None
    except caught("RevisionNotFoundError") as e:
        raise WeightsError(
            f"model {model_id} has no revision {revision!r} ({_first_line(e)})"
        ) from None
    except caught("LocalEntryNotFoundError", "IncompleteSnapshotError", "OfflineModeIsEnabled"):
        raise _not_available(model_id, downloading=True) from None
    except caught("HfHubHTTPError") as e:
        raise WeightsError(f"downloading {model_id} failed: {_first_line(e)}") from None
    except caught("HFValidationError") as e:  # our id check should have caught it first
        raise UsageError(f"cannot download {model_id}: {_first_line(e)}") from None
    except OSError as e:
        raise WeightsError(f"downloading {model_id} failed: {e}") from None
    path = Path(str(folder))
    if not (path / "config.json").is_file():
        raise WeightsError(f"{path}: the download of {model_id} has no config.json")
    return path


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def cached_models() -> list[tuple[str, Path, int]]:
    """(repo id, newest snapshot folder, bytes on disk) of every model in the HF cache."""
    from huggingface_hub import scan_cache_dir

    cache = hub_cache_dir()
    if not cache.is_dir():
        return []
    try:
        info = scan_cache_dir(cache)
    except Exception:  # CacheNotFound or a half-written cache: doctor reports nothing cached
        return []
    found: list[tuple[str, Path, int]] = []
    for repo in info.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda r: r.last_modified)
        found.append((repo.repo_id, Path(newest.snapshot_path), int(repo.size_on_disk)))
    return sorted(found)


def model_revision(path: str | Path) -> str | None:
    """The commit hash of a snapshot folder inside the HF cache, else None."""
    p = Path(path).expanduser().absolute()
    for folder in (p, *p.parents):
        parent = folder.parent
        if (
            parent.name == "snapshots"
            and parent.parent.name.startswith("models--")
            and _COMMIT.match(folder.name)
        ):
            return folder.name
    return None


def model_name(model: str | Path | None = None) -> str:
    """How records name a model: a local folder's absolute path (however it was typed), else
    the hub id (``model``, else $IXCDOC_MODEL, else the official id). Part of the resume key."""
    name = str(model) if model is not None else os.environ.get(ENV_MODEL) or DEFAULT_MODEL_ID
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def local_revision(model: str | Path | None = None) -> str | None:
    """The snapshot commit ``model`` will load from, when it is already on this machine
    (a folder, or a complete cached snapshot); None otherwise. Never downloads."""
    try:
        path = resolve_model(model, offline=True, download=False)
    except WeightsError:
        return None
    return model_revision(path)
