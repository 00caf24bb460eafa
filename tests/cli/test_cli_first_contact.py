"""What a new user meets first: help that says what the code does, a way to try every command
without weights or a GPU, and headers that survive odd file names."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

from ixcdoc.errors import EXIT_USAGE
from tests.cli.helpers import (
    IXCDOC,
    model_args,
    read_records,
    run_in_terminal,
    subprocess_env,
    text_png,
)

COMMANDS = ["plan", "tiers", "ask", "extract", "chart", "eval", "doctor", "download"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_no_type_placeholders(invoke, command: str) -> None:
    res = invoke([command, "--help"])
    assert res.exit_code == 0
    for bad in ("<str>", "<list[", "<int", "<path>", "{", "}"):
        assert bad not in res.stdout, f"{command} --help shows {bad!r}"


def test_table_commands_do_not_call_their_json_per_page(invoke) -> None:
    assert "per tier" in invoke(["tiers", "--help"]).stdout
    assert "one JSON object" in invoke(["doctor", "--help"]).stdout
    assert "per page" not in invoke(["doctor", "--help"]).stdout


@pytest.mark.parametrize("device", ["meta", "tpu", "cuda:x", "cpu0"])
def test_an_unknown_device_is_a_usage_error(invoke, tmp_path: Path, device: str) -> None:
    page = text_png(tmp_path / "a.png", "hi")
    res = invoke(["extract", str(page), "--device", device])
    assert res.exit_code == EXIT_USAGE
    assert "--device" in res.stderr and device in res.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without CUDA")
def test_without_a_gpu_the_message_offers_bf16_on_the_cpu_and_a_tiny_model(
    invoke, tmp_path: Path
) -> None:
    page = text_png(tmp_path / "a.png", "hi")
    res = invoke(["ask", str(page), "what?"])
    assert res.exit_code == 1
    assert "--device cpu --quant bf16" in res.stderr
    assert "ixcdoc doctor --selftest --keep" in res.stderr
    assert "--max-new-tokens 16" in res.stderr  # answers in seconds, not the task's full length
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="the hint is for machines without a GPU")
def test_doctor_on_a_terminal_without_gpu_or_weights_points_at_the_selftest(
    tmp_path: Path,
) -> None:
    """The real command on a terminal, as a newcomer runs it first: with no GPU and no cached
    weights, its last row is the command that builds a tiny model. Exit code 0, as before."""
    env = subprocess_env()
    env.update({"HF_HUB_CACHE": str(tmp_path / "hub"), "COLUMNS": "200"})
    code, shown = run_in_terminal([*IXCDOC, "doctor"], env)
    assert code == 0, shown
    rows = [line.strip() for line in shown.splitlines() if line.strip()]
    assert rows[-1].startswith("try now  ixcdoc doctor --selftest --keep tiny-model  ("), rows
    assert "weights  none cached" in shown


def test_the_selftest_ends_with_a_command_that_answers_in_seconds(invoke, tmp_path: Path) -> None:
    """The closing line of ``--selftest --keep`` is a command to paste: it runs as it stands
    (from any folder), caps the answer with --max-new-tokens, exits 0 and prints an answer."""
    kept = tmp_path / "my tiny"  # a space: the command must quote it
    res = invoke(["doctor", "--selftest", "--keep", str(kept)])
    assert res.exit_code == 0, res.stderr
    argv = shlex.split(res.stderr.splitlines()[-1])
    assert argv[0] == "ixcdoc" and "--max-new-tokens" in argv
    assert argv[argv.index("--model") + 1] == str(kept)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run(
        [*IXCDOC, *argv[1:]],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=elsewhere,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()  # the (random) answer
    (tokens,) = re.findall(r", (\d+) tokens, ", run.stderr)  # the answer's summary line
    assert 1 <= int(tokens) <= int(argv[argv.index("--max-new-tokens") + 1])


def test_selftest_keep_leaves_a_model_every_command_can_use(invoke, tmp_path: Path) -> None:
    kept = tmp_path / "tiny-model"
    res = invoke(["doctor", "--selftest", "--keep", str(kept)])
    assert res.exit_code == 0, res.stderr
    assert f"--model {kept} --device cpu" in res.stderr
    page = text_png(tmp_path / "a.png", "Total 12")
    out = invoke(["extract", str(page), "--json", *model_args(kept)])
    assert out.exit_code == 0, out.stderr
    (rec,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert rec["status"] == "ok" and rec["model"] == str(kept.resolve())
    again = invoke(["doctor", "--selftest", "--keep", str(kept)])
    assert again.exit_code == EXIT_USAGE and "already exists" in again.stderr
    alone = invoke(["doctor", "--keep", str(tmp_path / "other")])
    assert alone.exit_code == EXIT_USAGE and "--keep needs --selftest" in alone.stderr


def test_a_newline_in_a_file_name_stays_inside_its_header(invoke, ckpts, tmp_path: Path) -> None:
    odd = text_png(tmp_path / "in" / "two\nlines.png", "A")
    plain = text_png(tmp_path / "in" / "plain.png", "B")
    res = invoke(["extract", str(odd), str(plain), *model_args(ckpts.normal)])
    assert res.exit_code == 0, res.stderr
    headers = [line for line in res.stdout.splitlines() if line.startswith("==> ")]
    assert headers == [
        f"==> {tmp_path}/in/two\\nlines.png page 1/1 <==",
        f"==> {plain} page 1/1 <==",
    ]


def test_ask_and_chart_write_records_with_o(invoke, ckpts, tmp_path: Path) -> None:
    page = text_png(tmp_path / "a.png", "Total 12")
    out = tmp_path / "answers.jsonl"
    res = invoke(
        ["ask", str(page), "What is the total?", "-o", str(out), *model_args(ckpts.normal)]
    )
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""  # with -o the records are the output
    again = invoke(
        ["ask", str(page), "What is the total?", "-o", str(out), *model_args(ckpts.normal)]
    )
    assert again.exit_code == 0 and "1 already done" in again.stderr
    chart = invoke(["chart", str(page), "-o", str(out), *model_args(ckpts.normal)])
    assert chart.exit_code == 0, chart.stderr
    recs = read_records(out)
    assert [(r.task, r.question) for r in recs] == [
        ("ask", "What is the total?"),
        ("chart", None),
    ]


def test_chart_honours_max_pixels(invoke, ckpts, tmp_path: Path) -> None:
    page = text_png(tmp_path / "a.png", "Total 12", size=(200, 100))
    res = invoke(["chart", str(page), "--max-pixels", "1000", *model_args(ckpts.normal)])
    assert res.exit_code == 3
    assert "a.png" in res.stderr and "1000" in res.stderr.replace(",", "")
