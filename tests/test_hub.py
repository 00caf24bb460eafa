"""Model resolution: local folders, the HF cache (built by hand in tmp_path), the download seam."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest

from ixcdoc import hub
from ixcdoc.config import DEFAULT_MODEL_ID
from ixcdoc.errors import UsageError, WeightsError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty private HF cache and no IXCDOC_MODEL for every test."""
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv(hub.ENV_MODEL, raising=False)
    return cache


def _ckpt(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    return folder


def _cached_repo(cache: Path, repo_id: str, commit: str = COMMIT) -> Path:
    """Lay out one cached snapshot the way huggingface_hub does."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    snap = _ckpt(repo / "snapshots" / commit)
    (snap / "tokenizer.model").write_bytes(b"x" * 100)
    shards = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    index = {"metadata": {}, "weight_map": {"a": shards[0], "b": shards[1]}}
    (snap / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    for shard in shards:
        (snap / shard).write_bytes(b"w" * 10)
    return snap


def _unreachable(model_id: str) -> str:
    return re.escape(
        f"model {model_id} is not in the local cache and the hub is unreachable; run "
        "`ixcdoc download` on a machine with internet access, or pass --model PATH"
    )


def test_offline_and_not_cached_is_one_clear_error() -> None:
    with pytest.raises(WeightsError, match="^" + _unreachable("owner/model") + "$"):
        hub.resolve_model("owner/model")


def test_explicit_offline_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls: list[Any] = []
    monkeypatch.setattr(hub, "download_model", lambda *a, **k: calls.append(a))
    with pytest.raises(WeightsError, match=_unreachable("owner/model")):
        hub.resolve_model("owner/model", offline=True)
    assert calls == []


def test_default_model_id_when_nothing_is_given() -> None:
    with pytest.raises(WeightsError, match=_unreachable(DEFAULT_MODEL_ID)):
        hub.resolve_model()


def test_local_folder_is_used_as_is(tmp_path: Path) -> None:
    folder = _ckpt(tmp_path / "ckpt")
    assert hub.resolve_model(folder) == folder
    assert hub.resolve_model(str(folder)) == folder


def test_local_folder_without_config_names_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match=re.escape(str(tmp_path / "empty")) + ".*config.json"):
        hub.resolve_model(tmp_path / "empty")


def test_missing_local_folder(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such checkpoint folder"):
        hub.resolve_model(str(tmp_path / "nope"))
    with pytest.raises(WeightsError, match="no such checkpoint folder"):
        hub.resolve_model("./relative/nope")


def test_env_model_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _ckpt(tmp_path / "from-env")
    monkeypatch.setenv(hub.ENV_MODEL, str(folder))
    assert hub.resolve_model() == folder
    monkeypatch.setenv(hub.ENV_MODEL, "someone/else")
    with pytest.raises(WeightsError, match=_unreachable("someone/else")):
        hub.resolve_model()


def test_cached_hub_id_resolves_offline(_cache: Path) -> None:
    snap = _cached_repo(_cache, "owner/model")
    path = hub.resolve_model("owner/model")
    assert path == snap
    assert hub.model_revision(path) == COMMIT
    assert hub.model_revision(path / "config.json") == COMMIT


def test_hf_home_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.hub_cache_dir() == tmp_path / "home" / "hub"
    snap = _cached_repo(tmp_path / "home" / "hub", "owner/model")
    assert hub.resolve_model("owner/model") == snap


def test_model_revision_outside_the_cache(tmp_path: Path) -> None:
    assert hub.model_revision(_ckpt(tmp_path / "plain")) is None


def test_cached_models(_cache: Path) -> None:
    assert hub.cached_models() == []
    snap = _cached_repo(_cache, "owner/model")
    found = hub.cached_models()
    assert [(r, p) for r, p, _ in found] == [("owner/model", snap)]
    assert found[0][2] > 0


def _fake_snapshot_download(tmp_path: Path, calls: list[dict[str, Any]]) -> Any:
    def fake(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        tqdm_class = kwargs.get("tqdm_class")
        if tqdm_class is not None:
            bar = tqdm_class(total=3, desc="Fetching 3 files")
            bar.update(1)
            bar.update(2)
            bar.close()
        return str(_ckpt(tmp_path / "snap" / repo_id.replace("/", "--")))

    return fake


def test_download_fetches_only_weights_config_and_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", _fake_snapshot_download(tmp_path, calls)
    )
    path = hub.download_model("owner/model", revision="refs/pr/1")
    assert (path / "config.json").is_file()
    (call,) = calls
    assert call["repo_id"] == "owner/model"
    assert call["revision"] == "refs/pr/1"
    allow = list(call["allow_patterns"])
    assert set(allow) == {"*.json", "*.bin", "*.safetensors", "tokenizer.model"}
    assert not any(p.endswith(".py") or p in ("*", "*.*") for p in allow)
    assert "*.py" in call["ignore_patterns"]
    assert Path(call["cache_dir"]) == hub.hub_cache_dir()


def test_download_reports_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", _fake_snapshot_download(tmp_path, calls)
    )
    seen: list[tuple[str, float, float | None]] = []
    hub.download_model("owner/model", progress=lambda *a: seen.append(a))
    assert seen == [("Fetching 3 files", 1.0, 3), ("Fetching 3 files", 3.0, 3)]


def test_resolve_downloads_when_online_and_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls: list[dict[str, Any]] = []
    fake = _fake_snapshot_download(tmp_path, calls)

    def snapshot(repo_id: str, **kwargs: Any) -> str:
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return fake(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    path = hub.resolve_model("owner/model")
    assert path == tmp_path / "snap" / "owner--model"
    assert len(calls) == 1
    with pytest.raises(WeightsError, match="ixcdoc download owner/model"):
        hub.resolve_model("owner/model", download=False)


def test_download_without_network_is_the_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def no_network(repo_id: str, **kwargs: Any) -> str:
        raise huggingface_hub.errors.LocalEntryNotFoundError("connection refused")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(WeightsError, match="cannot download owner/model: the hub cannot be "):
        hub.resolve_model("owner/model")


def test_download_refuses_when_offline_without_sending_you_back_to_download() -> None:
    """Issue 9.14: `ixcdoc download` with no hub used to say "run `ixcdoc download`"."""
    with pytest.raises(WeightsError) as e:
        hub.download_model("owner/model")
    assert "HF_HUB_OFFLINE is set" in e.value.message
    assert "copy the cache folder" in e.value.message
    assert "ixcdoc download" not in e.value.message


def test_partly_cached_model_names_what_is_missing(_cache: Path) -> None:
    snap = _cached_repo(_cache, "owner/model")
    (snap / "model-00002-of-00002.safetensors").unlink()
    assert hub.missing_files(snap) == ["model-00002-of-00002.safetensors"]
    with pytest.raises(WeightsError, match=r"partly in the local cache.*model-00002-of-00002"):
        hub.resolve_model("owner/model")


def test_partly_cached_model_resumes_when_online(
    _cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    snap = _cached_repo(_cache, "owner/model")
    (snap / "tokenizer.model").unlink()
    real = huggingface_hub.snapshot_download
    calls: list[dict[str, Any]] = []
    fake = _fake_snapshot_download(tmp_path, calls)

    def snapshot(repo_id: str, **kwargs: Any) -> str:
        return (
            real(repo_id, **kwargs) if kwargs.get("local_files_only") else fake(repo_id, **kwargs)
        )

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    assert hub.resolve_model("owner/model") == tmp_path / "snap" / "owner--model"
    assert len(calls) == 1


def test_missing_files_of_a_tiny_checkpoint(tmp_path: Path) -> None:
    from ixcdoc.tinyckpt import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path / "tiny")
    assert hub.missing_files(path) == []
    (path / "pytorch_model-00001-of-00002.bin").unlink()
    assert hub.missing_files(path) == ["pytorch_model-00001-of-00002.bin"]
    assert hub.missing_files(tmp_path) == [
        "config.json",
        "tokenizer.model",
        "weights (*.safetensors or *.bin)",
    ]


@pytest.mark.parametrize("bad", ["bad id!!", "owner/na me", "just-a-name", "a/b/c", "o/a--b", ""])
def test_download_refuses_a_malformed_id_in_one_line(
    bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def must_not_run(repo_id: str, **kwargs: Any) -> str:
        raise AssertionError("the hub was asked about a malformed id")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", must_not_run)
    with pytest.raises(UsageError, match=r"is not a hub id; expected owner/name") as info:
        hub.download_model(bad)
    assert "\n" not in str(info.value)


def test_download_of_a_local_folder_says_to_use_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _ckpt(tmp_path / "SOMEFOLDER")
    monkeypatch.chdir(tmp_path)
    for given in ("SOMEFOLDER", str(folder)):
        with pytest.raises(UsageError, match=r"is a local folder, not a hub id") as info:
            hub.download_model(given)
        assert info.value.message.endswith(f"use it as --model {given}")
