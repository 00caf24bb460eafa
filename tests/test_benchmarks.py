"""The GPU benchmark cannot run here; its --tiny mode keeps the script from rotting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_tiny_mode_runs_and_matches_the_reference(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu.py"),
        "--tiny",
        "--new-tokens",
        "3",
        "--tiers",
        "1,4",
        "--reference",
        "--json",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, cwd=ROOT)
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["quant"], r["tier"]) for r in rows] == [
        ("bf16", 1),
        ("bf16", 4),
        ("4bit", 1),
        ("4bit", 4),
    ]
    for r in rows:
        assert r["decode_tokens"] == 3 and r["image_tokens"] > 0
    # the upstream-style loop decodes the same greedy tokens from the same weights
    assert all(r["reference_same_tokens"] for r in rows if r["quant"] == "bf16")


def test_feeder_benchmark_runs_on_a_tiny_input(tmp_path: Path) -> None:
    out = tmp_path / "feeder.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "feeder.py"), "--tiers", "1"]
    cmd += ["--pages", "2", "--repeat", "1", "--json", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, cwd=ROOT)
    data = json.loads(out.read_text())
    assert [r["tier"] for r in data["rows"]] == [1]
    for r in data["rows"]:
        assert r["pages"] == 2 and r["plain_ms"] > 0
        assert {"in-process", "1 process"} <= set(r["feeder"])
        assert all(v["ratio"] > 0 for v in r["feeder"].values())
