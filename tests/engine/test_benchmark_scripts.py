"""The batched GPU benchmark cannot run here; its --tiny mode keeps the script from rotting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_batched_tiny_mode_runs(tmp_path: Path) -> None:
    out = tmp_path / "gpu_batched.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu.py"),
        "--tiny",
        "--batched",
        "--quant",
        "bf16",
        "--tiers",
        "1,4",
        "--batches",
        "1,3",
        "--new-tokens",
        "3",
        "--json",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, cwd=ROOT)
    result = json.loads(out.read_text())
    assert result["cudagraph_skips"] == 0  # nothing compiled on the CPU
    rows = result["rows"]
    assert [(r["tier"], r["batch"], r["pages"]) for r in rows] == [
        (1, 1, 2),
        (1, 3, 3),
        (4, 1, 2),
        (4, 3, 3),
    ]
    for r in rows:
        assert r["decode_tokens"] == 3 * r["pages"]  # no stop ids: every page decodes 3 tokens
        assert r["image_tokens"] > 0 and r["estimate_gib"] > 0
        assert r["step_ms"] > 0 and r["step_tokens_per_s"] > 0
        assert r["bound_step_ms"] is None and r["step_vs_bound"] is None  # no bandwidth on a CPU
        assert r["compute_bound_from"] is None
    assert [r["pages_vs_b1"] for r in rows if r["batch"] == 1] == [1.0, 1.0]


def test_engine_cpu_proxy_runs(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "engine.py"),
        "--requests",
        "5",
        "--batches",
        "1,4",
        "--no-prefix",
        "4",
        "--layers",
        "2",
        "--new-tokens",
        "2,4",
        "--rounds",
        "1",
        "--json",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, cwd=ROOT)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["mode"], r["batch"]) for r in rows] == [
        ("chat loop", 1),
        ("engine b1", 1),
        ("engine b4", 4),
        ("b4 no prefix", 4),
    ]
    assert len({r["tokens"] for r in rows}) == 1  # every mode generates the same tokens
    assert all(r["same"] == 5 for r in rows)  # and, on 5 requests, exactly the chat loop's
