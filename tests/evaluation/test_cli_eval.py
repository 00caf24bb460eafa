"""``ixcdoc eval`` through the real CLI on a tiny checkpoint: JSON report, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

from ixcdoc.errors import EXIT_FATAL, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from tests.evaluation import builders
from tests.evaluation.conftest import EvalCkpts


def model_args(ckpt: Path) -> list[str]:
    return ["--model", str(ckpt), "--device", "cpu", "--max-new-tokens", "4"]


def test_eval_writes_records_and_reports(invoke, eval_ckpts: EvalCkpts, tmp_path: Path) -> None:
    data = builders.chartqa(tmp_path / "ChartQA Dataset")
    out = tmp_path / "chartqa.jsonl"
    args = ["eval", "chartqa", data, "-o", out, "--json", *model_args(eval_ckpts.normal)]
    r = invoke(args)
    assert r.exit_code == EXIT_OK, r.stderr
    report = json.loads(r.stdout)
    [row] = report["rows"]
    assert (row["benchmark"], row["split"], row["hd_setting"], row["n"]) == (
        "chartqa",
        "val",
        "25",
        3,
    )
    assert row["tiers"] == {"HD25": 3}
    assert row["paper"] == 81.0
    assert "3 answered" in r.stderr
    assert len(out.read_text().splitlines()) == 3

    again = invoke(args)
    assert again.exit_code == EXIT_OK
    assert "3 already done" in again.stderr
    assert len(out.read_text().splitlines()) == 3
    assert json.loads(again.stdout)["rows"] == report["rows"]

    # the report alone, from the file, without a model
    rep = invoke(["eval", "report", out, "--json"])
    assert rep.exit_code == EXIT_OK
    assert json.loads(rep.stdout)["rows"] == report["rows"]


def test_eval_limit_and_hd(invoke, eval_ckpts: EvalCkpts, tmp_path: Path) -> None:
    data = builders.ocrbench(tmp_path / "ocrbench")
    r = invoke(
        [
            "eval",
            "ocrbench",
            data,
            "--limit",
            "1",
            "--hd",
            "16",
            "--json",
            *model_args(eval_ckpts.normal),
        ]
    )
    assert r.exit_code == EXIT_OK, r.stderr
    [row] = json.loads(r.stdout)["rows"]
    assert (row["n"], row["hd_setting"], row["unit"], row["split"]) == (1, "16", "/1000", "test")


def test_eval_beams(invoke, eval_ckpts: EvalCkpts, tmp_path: Path) -> None:
    data = builders.ocrbench(tmp_path / "ocrbench")
    out = tmp_path / "o.jsonl"
    args = ["eval", "ocrbench", data, "--limit", "1", "-o", out, *model_args(eval_ckpts.normal)]
    r = invoke([*args, "--beams", "3", "--json"])
    assert r.exit_code == EXIT_OK, r.stderr
    [row] = json.loads(r.stdout)["rows"]
    assert (row["n"], row["num_beams"]) == (1, 3)
    assert [json.loads(x)["num_beams"] for x in out.read_text().splitlines()] == [3]
    table = invoke(["eval", "report", out])
    assert table.exit_code == EXIT_OK
    assert "beams" in table.stdout
    bad = invoke([*args, "--beams", "0"])
    assert bad.exit_code == EXIT_USAGE
    assert "--beams" in bad.stderr


def test_eval_errors_before_loading(invoke, tmp_path: Path) -> None:
    missing_model = ["--model", str(tmp_path / "no-model"), "--device", "cpu"]
    r = invoke(["eval", "textvqa", tmp_path, *missing_model])
    assert r.exit_code == EXIT_USAGE
    assert "unknown benchmark 'textvqa'" in r.stderr
    # the dataset is read before the model: the error names the file, not the weights
    r = invoke(["eval", "docvqa", tmp_path, *missing_model])
    assert r.exit_code == EXIT_FATAL
    assert "val_v1.0.json" in r.stderr
    r = invoke(["eval", "docvqa", tmp_path, "--redo-failed", *missing_model])
    assert r.exit_code == EXIT_USAGE
    assert "--redo-failed needs -o" in r.stderr
    r = invoke(["eval", "docvqa", tmp_path, "--hd", "zero", *missing_model])
    assert r.exit_code == EXIT_USAGE
    r = invoke(["eval", "report", tmp_path / "none.jsonl"])
    assert r.exit_code == EXIT_FATAL
    assert "no such records file" in r.stderr


def test_eval_failed_question_exits_partial(invoke, eval_ckpts: EvalCkpts, tmp_path: Path) -> None:
    data = builders.docvqa(tmp_path / "docvqa", n=2)
    (data / "documents" / "doc0.png").write_bytes(b"not an image")  # there, but unreadable
    out = tmp_path / "out.jsonl"
    r = invoke(["eval", "docvqa", data, "-o", out, "--json", *model_args(eval_ckpts.normal)])
    assert r.exit_code == EXIT_PARTIAL
    [row] = json.loads(r.stdout)["rows"]
    assert (row["n"], row["failed"]) == (2, 1)
    assert "1 failed" in r.stderr
    # the report of the file alone is not a failed run
    assert invoke(["eval", "report", out, "--json"]).exit_code == EXIT_OK


def test_eval_mpdocvqa_reports_anls_and_page_accuracy(
    invoke, eval_ckpts: EvalCkpts, tmp_path: Path
) -> None:
    data = builders.mpdocvqa(tmp_path / "mp-docvqa")
    out = tmp_path / "mp.jsonl"
    args = ["eval", "mpdocvqa", data, "-o", out, *model_args(eval_ckpts.normal)]
    r = invoke([*args, "--json"])
    assert r.exit_code == EXIT_OK, r.stderr
    [row] = json.loads(r.stdout)["rows"]
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 2 and all(len(x["page_scores"]) in (2, 3) for x in recs)
    hits = sum(x["predicted_page_idx"] == x["answer_page_idx"] for x in recs)
    assert (row["benchmark"], row["n"], row["hd_setting"]) == ("mpdocvqa", 2, "55")
    assert row["page_accuracy"] == 100.0 * hits / 2
    assert row["score"] == 100.0 * sum(x["score"] for x in recs) / 2  # ANLS x 100
    assert row["paper"] is None
    rep = invoke(["eval", "report", out, "--json"])
    assert rep.exit_code == EXIT_OK and json.loads(rep.stdout)["rows"] == [row]
    # on a terminal: a page accuracy column, only when a row has one
    from rich.console import Console

    from ixcdoc.cli.evaluate import eval_table
    from ixcdoc.evaluation.report import summarize
    from ixcdoc.evaluation.results import load_records

    def drawn(rows: list) -> str:
        console = Console(record=True, width=240)
        console.print(eval_table(rows))
        return console.export_text()

    rows = summarize(load_records(out, repair=False).records())
    assert "page acc" in drawn(rows) and f"{100.0 * hits / 2:.1f}%" in drawn(rows)
    others = summarize([dict(x, benchmark="docvqa") for x in _without_pages(recs)])
    assert "page acc" not in drawn(others)


def _without_pages(recs: list[dict]) -> list[dict]:
    keys = ("answer_page_idx", "predicted_page_idx", "page_scores")
    return [{k: v for k, v in r.items() if k not in keys} for r in recs]


def test_missing_images_stop_the_run_before_the_model_loads(invoke, tmp_path: Path) -> None:
    data = builders.docvqa(tmp_path / "docvqa", n=3)
    (data / "documents" / "doc1.png").unlink()
    (data / "documents" / "doc2.png").unlink()
    # no weights here: reaching the loader would be a different error
    missing_model = ["--model", str(tmp_path / "no-model"), "--device", "cpu"]
    r = invoke(["eval", "docvqa", data, *missing_model])
    assert r.exit_code == EXIT_FATAL
    [line] = r.stderr.strip().splitlines()
    assert "2 of the 3 images" in line and "doc1.png (question 1001)" in line
    assert r.stdout == ""
    # --limit 1 needs only the first image: the check passes and the model is what fails
    r = invoke(["eval", "docvqa", data, "--limit", "1", *missing_model])
    assert r.exit_code == EXIT_FATAL and "no such checkpoint folder" in r.stderr


def test_ocrbench_repeated_ids_are_all_scored(
    invoke, eval_ckpts: EvalCkpts, tmp_path: Path
) -> None:
    # OCRBench repeats ids (and some questions): keyed by OCRBench's id, the pair collapsed
    # into one record and the score counted 988 questions, not 1,000.
    data = builders.ocrbench(tmp_path / "ocrbench")
    entries = json.loads((data / "OCRBench.json").read_text())
    (data / "OCRBench.json").write_text(json.dumps([*entries, dict(entries[0])]))
    out = tmp_path / "o.jsonl"
    r = invoke(["eval", "ocrbench", data, "-o", out, "--json", *model_args(eval_ckpts.normal)])
    assert r.exit_code == EXIT_OK, r.stderr
    [row] = json.loads(r.stdout)["rows"]
    assert row["n"] == 3
    assert [json.loads(x)["question_id"] for x in out.read_text().splitlines()] == ["0", "1", "2"]
    rep = invoke(["eval", "report", out, "--json"])
    assert json.loads(rep.stdout)["rows"][0]["n"] == 3
