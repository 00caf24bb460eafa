"""The benchmarks cannot measure anything here (no GPU, a busy 2-core VM); their smallest
modes run in the suite so the scripts do not rot, and their JSON is checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(script: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    """``python benchmarks/<script> <args> --json <tmp>`` from the repository root -> its JSON.
    A failing script fails the test with the end of its stderr."""
    out = tmp_path / f"{Path(script).stem}.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_gpu_benchmark_tiny_mode_runs_and_matches_the_reference(tmp_path: Path) -> None:
    args = ["--tiny", "--new-tokens", "3", "--tiers", "1,4", "--reference"]
    data = run_benchmark("gpu.py", tmp_path, *args)
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


def test_gpu_batched_tiny_mode_runs(tmp_path: Path) -> None:
    args = ["--tiny", "--batched", "--quant", "bf16", "--tiers", "1,4", "--batches", "1,3"]
    result = run_benchmark("gpu.py", tmp_path, *args, "--new-tokens", "3")
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
    args = ["--requests", "5", "--batches", "1,4", "--no-prefix", "4", "--layers", "2"]
    args += ["--new-tokens", "2,4", "--rounds", "1"]
    rows = run_benchmark("engine.py", tmp_path, *args)["rows"]
    assert [(r["mode"], r["batch"]) for r in rows] == [
        ("chat loop", 1),
        ("engine b1", 1),
        ("engine b4", 4),
        ("b4 no prefix", 4),
    ]
    assert len({r["tokens"] for r in rows}) == 1  # every mode generates the same tokens
    assert all(r["same"] == 5 for r in rows)  # and, on 5 requests, exactly the chat loop's


def test_speculation_cpu_proxy_runs(tmp_path: Path) -> None:
    args = ["--requests", "3", "--batches", "1,2", "--corrupt", "0,100", "--layers", "2"]
    rows = run_benchmark("speculate.py", tmp_path, *args, "--new-tokens", "6,8")["rows"]
    assert [(r["batch"], r["draft"]) for r in rows] == [
        (1, "off"),
        (1, "0%"),
        (1, "100%"),
        (2, "off"),
        (2, "0%"),
        (2, "100%"),
    ]
    assert all(r["same"] == 3 for r in rows)  # speculation never changes a token
    assert all(r["accepted"] == 0 for r in rows if r["draft"] == "off")
    assert all(r["accepted"] > 0 for r in rows if r["draft"] == "0%")  # perfect drafts


def test_gpu_batched_speculation_table_runs_on_the_cpu(tmp_path: Path) -> None:
    args = ["--tiny", "--batched", "--quant", "bf16", "--tiers", "1", "--batches", "1,2"]
    args += ["--new-tokens", "6", "--speculate", "0,100", "--speculate-pages", "2"]
    rows = run_benchmark("gpu.py", tmp_path, *args)["rows"]
    table = [r for r in rows if r.get("table") == "speculate"]
    assert [(r["batch"], r["draft"]) for r in table] == [
        (1, "off"),
        (1, "0%"),
        (1, "100%"),
        (2, "off"),
        (2, "0%"),
        (2, "100%"),
    ]
    assert all(r["same"] == 2 and r["quant"] == "bf16" for r in table)


def test_feeder_benchmark_runs_on_a_tiny_input(tmp_path: Path) -> None:
    data = run_benchmark("feeder.py", tmp_path, "--tiers", "1", "--pages", "2", "--repeat", "1")
    assert [r["tier"] for r in data["rows"]] == [1]
    for r in data["rows"]:
        assert r["pages"] == 2 and r["plain_ms"] > 0
        assert {"in-process", "1 process"} <= set(r["feeder"])
        assert all(v["ratio"] > 0 for v in r["feeder"].values())


def test_screening_benchmark_tiny_mode_runs(tmp_path: Path) -> None:
    args = ["--pages", "2", "--tiers", "1,4", "--answer-tokens", "2", "--layers", "2"]
    data = run_benchmark("screening.py", tmp_path, *args, "--rounds", "1")
    rows = data["rows"]
    assert [(r["kind"], r["tier"], r["pages"], r["new_tokens"]) for r in rows] == [
        ("screen", 1, 2, 0),
        ("screen", 4, 2, 0),
        ("answer", 25, 1, 2),
    ]
    # the real 7B's image tokens of a letter page: 144(rc+1) + 12(r+1) + 1
    assert [r["image_tokens_7b_letter"] for r in rows] == [313, 757, 3097]
    assert all(r["wall_s_per_page"] > 0 for r in rows)
    assert rows[2]["vs_answer"] == {"2": 1.0}


def test_serve_backends_benchmark_runs_and_the_one_slot_engine_answers_as_chat(
    tmp_path: Path,
) -> None:
    args = ["--requests", "3", "--layers", "2", "--rounds", "1", "--new-tokens", "2,4"]
    data = run_benchmark("serve_backends.py", tmp_path, *args)
    assert [r["backend"] for r in data["rows"]] == ["Backend (chat)", "EngineBackend, 1 slot"]
    assert all(r["same"] == 3 for r in data["rows"])


def test_drafts_benchmark_measures_a_pdf_end_to_end(tmp_path: Path) -> None:
    import pytest

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from drafts import REAL_TOKENIZER  # type: ignore[import-not-found]

    if not (REAL_TOKENIZER / "tokenizer.model").is_file():
        pytest.skip(f"no real tokenizer at {REAL_TOKENIZER} (IXCDOC_REAL_TOKENIZER)")
    data = run_benchmark("drafts.py", tmp_path, "samples/paper.pdf", "--max-new-tokens", "3")
    (row,) = data["rows"]
    assert (row["document"], row["pages"], row["text_pages"]) == ("paper.pdf", 2, 2)
    assert len(row["draft_tokens_per_page"]) == 2 and min(row["draft_tokens_per_page"]) > 100
    assert row["kept_chars"] == row["text_chars"] > 0  # no page over the draft limit
    assert 0 < row["oracle_accepted"] <= row["oracle_proposed"]
    assert row["oracle_steps"] < row["oracle_tokens"]  # drafts save steps on a copied page
    e2e = row["tiny_e2e"]
    assert e2e["pages"] == 2 and 0 <= e2e["accepted_tokens"] <= e2e["tokens"]
    assert e2e["draft_tokens"] == sum(row["draft_tokens_per_page"])  # the same tokenizer


def test_kvlive_counts_an_extract_job_on_real_geometry(tmp_path: Path) -> None:
    args = ["--tiers", "16,25", "--pages", "1", "--new-tokens", "3", "--batch", "2"]
    data = run_benchmark("kvlive.py", tmp_path, *args)
    assert data["pages"] == 2 and data["steps"] == 2  # 3 tokens: the first from the prefill
    # a step reads at least what is live; a captured step the whole slot of every row
    assert data["live"] <= data["attended_eager"] <= data["attended_captured"]
    assert data["captured_over_live"] > 1.5  # slots sized for HD55 + 3, pages of HD16/25
