"""The Typer app and its error handling (the options the commands share: ``options``).

stdout carries results only (answers, text, JSON lines, the plan table); everything for people
(progress, warnings, errors) goes to stderr. Errors are one red line; ``--debug`` shows the
traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from ixcdoc import __version__
from ixcdoc.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    IxcdocError,
    Terminated,
)

try:  # Typer >= 0.22 vendors Click under typer._click; older Typer uses Click itself.
    from typer._click.exceptions import NoArgsIsHelpError
    from typer._click.exceptions import UsageError as ClickUsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError as ClickUsageError

    NoArgsIsHelpError = None  # type: ignore[assignment,misc]


def _plain_argument_help() -> None:
    """Help shows arguments as ``PATH...`` and ``[QUESTION]``, as Unix tools do.

    Typer 0.2x prints ``{PATH...}`` in the usage line and a ``<list[str]>`` type next to each
    argument; our arguments carry their own metavars, so both are noise. Older Typer has
    neither hook and needs nothing.
    """
    arg = getattr(typer.core, "TyperArgument", None)
    if arg is None or not hasattr(arg, "_usage_display_name"):  # pragma: no cover
        return
    arg.display_type_rich = lambda self, ctx: None
    arg._usage_display_name = lambda self: self.metavar or self.name.upper()


_plain_argument_help()

EXAMPLES = """\
Examples:

\b
  ixcdoc ask paper.pdf "What dataset is used in Table 3?"
  maim -s | ixcdoc ask - "what does the error say?"
  ixcdoc extract scans/ -o scans.jsonl
  ixcdoc extract invoice.pdf --json | jq -r .text
  ixcdoc extract tiny-print.pdf --hd 55
  ixcdoc chart revenue.png --table
  ixcdoc plan scans/ --vram 24
  ixcdoc doctor --selftest
  ixcdoc download
"""

app = typer.Typer(
    name="ixcdoc",
    help="Read documents with InternLM-XComposer2-4KHD on your own GPU.",
    epilog=EXAMPLES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state: dict[str, Any] = {"debug": False}
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def fail_line(message: str) -> None:
    """One red ``error:`` line on stderr (the message is text, never Rich markup: a file
    named "scan[1].pdf" must print as it is)."""
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", markup=True)


def handles_errors(fn: F) -> F:
    """Translate library errors into one red line and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except IxcdocError as e:
            if _state["debug"]:
                raise
            fail_line(e.message)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Terminated:
            err.print("terminated")
            raise typer.Exit(EXIT_TERMINATED) from None
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly with SIGPIPE's status, as Unix
            # tools do. stdout now points at devnull so the final flush cannot raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(EXIT_BROKEN_PIPE) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ixcdoc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """Read documents with InternLM-XComposer2-4KHD on your own GPU."""
    from ixcdoc.verbosity import set_verbose

    _state["debug"] = debug
    set_verbose(True if debug else None)  # library warnings only with --debug (or IXCDOC_DEBUG)


def main() -> None:
    """Console entry point: one red line for usage errors, exit codes as documented."""
    try:
        code = app(standalone_mode=False)
    except ClickUsageError as e:
        if NoArgsIsHelpError is not None and isinstance(e, NoArgsIsHelpError):
            typer.echo(e.ctx.get_help() if e.ctx else "", err=True)
            sys.exit(EXIT_USAGE)
        hint = f" (see: {e.ctx.command_path} --help)" if e.ctx else ""
        fail_line(e.format_message() + hint)
        code = EXIT_USAGE
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        code = EXIT_INTERRUPTED
    sys.exit(code if isinstance(code, int) else EXIT_OK)
