"""``ixcdoc doctor`` (report, tiers, --selftest) and a model found in the local hub cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.cli.helpers import (
    Checkpoints,
    Invoke,
    expected_grid,
    expected_tokens,
    model_args,
    parse_lines,
    text_png,
)

REPORT_KEYS = {
    "ixcdoc",
    "python",
    "torch",
    "cuda",
    "gpu",
    "bitsandbytes",
    "flash-attn",
    "hub cache",
    "cached_models",
    "try",
    "tiers",
}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def cache_model(cache: Path, ckpt: Path, repo_id: str) -> Path:
    """Put a checkpoint into the HF cache layout, as ``ixcdoc download`` leaves it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(ckpt, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "blobs").mkdir()
    return snapshot


def test_doctor_json_report(hub_cache: Path, invoke: Invoke) -> None:
    res = invoke(["doctor", "--json"])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert set(report) == REPORT_KEYS
    assert report["hub cache"] == str(hub_cache)
    assert report["cached_models"] == []
    assert report["try"] == "ixcdoc doctor --selftest --keep tiny-model"  # no weights yet
    assert [r["tier"] for r in report["tiers"]] == [9, 16, 25, 36, 55, 65]
    for r in report["tiers"]:
        rows, cols = expected_grid(1000, 1000, r["tier"])
        assert r["grid"] == [rows, cols]
        assert r["image_tokens"] == expected_tokens(rows, cols)
    import torch

    if not torch.cuda.is_available():
        assert "--device cpu" in report["gpu"]
        assert all(r["fits"] is None for r in report["tiers"])


def test_doctor_with_vram_says_what_fits(hub_cache: Path, invoke: Invoke) -> None:
    report = json.loads(invoke(["doctor", "--json", "--vram", "12"]).stdout)
    fits = {r["tier"]: r["fits"] for r in report["tiers"]}
    assert not any(f["bf16"] for f in fits.values())  # 7B bf16 weights need ~15 GiB
    assert fits[9]["4bit"] is True


def test_cached_model_is_listed_and_runs_offline_by_hub_id(
    hub_cache: Path, tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    snapshot = cache_model(hub_cache, ckpts.normal, "acme/tiny-ixc")
    report = json.loads(invoke(["doctor", "--json"]).stdout)
    (cached,) = report["cached_models"]
    assert cached["id"] == "acme/tiny-ixc"
    assert Path(cached["path"]) == snapshot

    png = text_png(tmp_path / "p.png", "cached")
    res = invoke(["extract", png, "--json", *model_args(Path("acme/tiny-ixc"))])
    assert res.exit_code == 0, res.stderr
    (rec,) = parse_lines(res.stdout)
    assert rec.model == "acme/tiny-ixc"
    assert rec.model_revision == COMMIT


def test_doctor_selftest_passes(hub_cache: Path, invoke: Invoke) -> None:
    res = invoke(["doctor", "--selftest"])
    assert res.exit_code == 0, res.stderr
    assert "selftest passed" in res.stderr.splitlines()[-1]
    steps = [line for line in res.stderr.splitlines() if line.startswith("  ok  ")]
    assert len(steps) >= 5
    assert set(json.loads(res.stdout)) == REPORT_KEYS  # piped: the report as one JSON line
