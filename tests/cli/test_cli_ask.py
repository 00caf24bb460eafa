"""``ixcdoc ask``: the question from the argument or stdin, the document from a path or stdin,
and the page chosen by the text layer, or by the model's screening where there is none."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.cli.helpers import (
    IXCDOC,
    Checkpoints,
    Invoke,
    model_args,
    parse_lines,
    scan_pdf,
    subprocess_env,
    text_pdf,
    text_png,
)

REPORT = [
    "Meeting notes about the office move and the parking rules.",
    "Quarterly revenue table: invoice totals and the balance due per month.",
    "Signature page with the contract stamp and the witness address.",
]


def test_piped_image_bytes_with_the_question_as_argument(
    tmp_path: Path, ckpts: Checkpoints
) -> None:
    """``maim -s | ixcdoc ask - "..."``: real stdin bytes, sniffed as PNG, answer on stdout."""
    png = text_png(tmp_path / "shot.png", "ERROR: disk full")
    proc = subprocess.run(
        [*IXCDOC, "ask", "-", "what does the error say?", "--json", *model_args(ckpts.normal)],
        input=png.read_bytes(),
        capture_output=True,
        cwd=tmp_path,
        env=subprocess_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    (rec,) = parse_lines(proc.stdout.decode())
    assert rec.source == "-"
    assert rec.task == "ask"
    assert rec.question == rec.prompt == "what does the error say?"
    assert rec.content_sha256 == hashlib.sha256(png.read_bytes()).hexdigest()
    assert rec.native_size == (120, 160)
    assert rec.status == "ok"


def test_question_from_stdin(tmp_path: Path, ckpts: Checkpoints, invoke: Invoke) -> None:
    """``echo "what is the total?" | ixcdoc ask invoice.png``."""
    png = text_png(tmp_path / "invoice.png", "Total 12.50")
    res = invoke(["ask", png, "--json", *model_args(ckpts.normal)], input="what is the total?\n")
    assert res.exit_code == 0, res.stderr
    (rec,) = parse_lines(res.stdout)
    assert rec.question == "what is the total?"
    assert rec.source == str(png)

    plain = invoke(["ask", png, *model_args(ckpts.normal)], input="what is the total?\n")
    assert plain.exit_code == 0
    assert plain.stdout == rec.text + "\n"  # the answer alone on stdout


def test_argument_question_wins_over_stdin(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    png = text_png(tmp_path / "p.png", "x")
    res = invoke(["ask", png, "which year?", "--json", *model_args(ckpts.normal)], input="other\n")
    assert res.exit_code == 0
    assert parse_lines(res.stdout)[0].question == "which year?"


def test_no_question_at_all_is_a_usage_error(tmp_path: Path, invoke: Invoke) -> None:
    png = text_png(tmp_path / "p.png", "x")
    for stdin in ("", "   \n"):
        res = invoke(["ask", png], input=stdin)
        assert res.exit_code == 2
        assert res.stdout == ""
        assert len(res.stderr.splitlines()) == 1 and "question" in res.stderr


def test_text_layer_picks_the_matching_page(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    pdf = text_pdf(tmp_path / "report.pdf", REPORT, size=(400, 150))
    base = ["--json", *model_args(ckpts.normal), "--hd", "4"]
    res = invoke(["ask", pdf, "What is the quarterly revenue in the table?", *base])
    assert res.exit_code == 0, res.stderr
    (rec,) = parse_lines(res.stdout)
    assert (rec.page, rec.page_count) == (2, 3)
    assert rec.render_dpi is not None
    assert rec.screening is None and "screened" not in res.stderr  # BM25 alone: no model pass

    res = invoke(["ask", pdf, "Who signed the contract and where is the witness?", *base])
    assert [r.page for r in parse_lines(res.stdout)] == [3]

    # --top-k 2 reads the two best pages; --all-pages reads every page in turn.
    two = parse_lines(invoke(["ask", pdf, "revenue table and stamp", *base, "--top-k", "2"]).stdout)
    assert sorted(r.page for r in two) == [2, 3]
    every = parse_lines(invoke(["ask", pdf, "anything", *base, "--all-pages"]).stdout)
    assert [r.page for r in every] == [1, 2, 3]


def test_pages_option_limits_the_ranking(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    pdf = text_pdf(tmp_path / "report.pdf", REPORT, size=(400, 150))
    args = ["--pages", "1,3", "--json", *model_args(ckpts.normal), "--hd", "4"]
    res = invoke(["ask", pdf, "quarterly revenue", *args])
    assert res.exit_code == 0, res.stderr
    # Neither selected page mentions revenue: the text layer cannot choose, so the model
    # screens the two selected pages and one is answered.
    (rec,) = parse_lines(res.stdout)
    assert rec.screening is not None and set(rec.screening.scores) == {1, 3}
    assert rec.page == best(rec.screening.scores)
    res = invoke(["ask", pdf, "the contract stamp", *args])
    (rec,) = parse_lines(res.stdout)
    assert rec.page == 3 and rec.screening is None  # BM25 chose: no model pass
    assert "screened" not in res.stderr


def best(scores: Mapping[int, float]) -> int:
    """The page with the highest score (the earlier one on a tie)."""
    return max(scores, key=lambda p: (scores[p], -p))


SCAN = ["Meeting notes office move", "Revenue table invoice totals", "Signature contract stamp"]


def test_a_scanned_document_is_screened_and_answered_once(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    """No text layer: every page screened at HD4 in one pass, the best one answered."""
    pdf = scan_pdf(tmp_path / "scan.pdf", SCAN)
    base = ["--json", *model_args(ckpts.normal), "--hd", "4"]
    res = invoke(["ask", pdf, "Who signed the contract?", *base])
    assert res.exit_code == 0, res.stderr
    (rec,) = parse_lines(res.stdout)
    assert rec.screening is not None and rec.screening.tier == 4
    scores = rec.screening.scores
    assert set(scores) == {1, 2, 3}
    assert rec.page == best(scores) and rec.screening.chosen == (rec.page,)
    assert rec.status == "ok" and rec.tier == 4  # answered at the task's tier (--hd 4 here)
    (note,) = [line for line in res.stderr.splitlines() if "screened" in line]
    assert note.startswith(f"{pdf}: screened 3 pages at HD4 for the question; ")
    assert f"answering page {rec.page} (score {scores[rec.page]:.3f}; next: page " in note

    # --top-k 2: the two best, best first, with the same scores
    res = invoke(["ask", pdf, "Who signed the contract?", *base, "--top-k", "2"])
    two = parse_lines(res.stdout)
    order = sorted(scores, key=lambda p: (-scores[p], p))
    assert [r.page for r in two] == order[:2]
    assert all(r.screening is not None and r.screening.chosen == tuple(order[:2]) for r in two)
    assert two[0].screening is not None
    assert two[0].screening.scores == pytest.approx(scores, abs=1e-5)

    # --all-pages: every page in turn, nothing screened
    res = invoke(["ask", pdf, "Who signed the contract?", *base, "--all-pages"])
    every = parse_lines(res.stdout)
    assert [r.page for r in every] == [1, 2, 3]
    assert all(r.screening is None for r in every) and "screened" not in res.stderr


def test_a_mixed_document_uses_the_text_layer_and_the_model(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    """Born-digital pages that share no word with the question are ruled out by their text;
    the matching text page competes with the scanned pages on the model's score."""
    texts = {1: "Quarterly revenue table.", 2: "Office move schedule."}
    pdf = scan_pdf(tmp_path / "mixed.pdf", [None, None, "Revenue", "Stamp"], texts=texts)
    res = invoke(
        ["ask", pdf, "What is the quarterly revenue?", "--json", *model_args(ckpts.normal)]
    )
    assert res.exit_code == 0, res.stderr
    (rec,) = parse_lines(res.stdout)
    assert rec.screening is not None and set(rec.screening.scores) == {1, 3, 4}
    assert rec.page == best(rec.screening.scores)


def test_every_run_that_writes_a_file_ends_with_one_summary_line(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    """``ask -o``, ``chart -o`` and a one-file ``extract -o`` say where the records went, on
    the first run as on a rerun (which does nothing)."""
    png = text_png(tmp_path / "invoice.png", "Total 12.50")
    for cmd in (["ask", png, "what is the total?"], ["chart", png], ["extract", png]):
        out = tmp_path / f"{cmd[0]}.jsonl"
        first = invoke([*cmd, "-o", out, *model_args(ckpts.normal)])
        assert first.exit_code == 0, first.stderr
        assert first.stdout == ""
        last = first.stderr.splitlines()[-1]
        assert last.startswith("1 ok; 1 page in ") and "tok/s" in last, last
        assert last.endswith(f"; records in {out}"), last
        again = invoke([*cmd, "-o", out, *model_args(ckpts.normal)])
        assert again.stderr.splitlines()[-1] == f"0 ok, 1 already done; records in {out}"
