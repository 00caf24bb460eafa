"""ixcdoc.cli.running: the interrupted line and the summary line every model command ends with."""

from __future__ import annotations

import pytest
import typer

from ixcdoc.cli.running import SAVED_PAGES, interruptible, summary_line
from ixcdoc.errors import EXIT_INTERRUPTED


def test_ctrl_c_stops_the_display_and_exits_130_with_the_hint(capsys) -> None:
    stopped: list[bool] = []
    stop = lambda: stopped.append(True)  # noqa: E731
    with pytest.raises(typer.Exit) as done, interruptible(stop, hint=SAVED_PAGES):
        raise KeyboardInterrupt
    assert done.value.exit_code == EXIT_INTERRUPTED
    assert stopped  # before the line is printed, and again on the way out
    assert capsys.readouterr().err == (
        "interrupted (every finished page is saved; run the same command again to resume)\n"
    )


def test_a_run_that_ends_stops_the_display_and_says_nothing(capsys) -> None:
    stopped: list[bool] = []
    with interruptible(lambda: stopped.append(True), hint=None):
        pass
    assert stopped == [True]
    assert capsys.readouterr().err == ""


def test_an_interrupt_without_saved_results_has_no_hint(capsys) -> None:
    with pytest.raises(typer.Exit), interruptible(lambda: None, hint=None):
        raise KeyboardInterrupt
    assert capsys.readouterr().err == "interrupted\n"


def test_the_summary_shows_the_first_count_always_and_the_others_when_not_zero(capsys) -> None:
    summary_line([(0, "ok"), (2, "failed"), (0, "blank"), (3, "already done")], "; records in o")
    summary_line([(5, "answered"), (0, "failed")], "")
    assert capsys.readouterr().err == "0 ok, 2 failed, 3 already done; records in o\n5 answered\n"
