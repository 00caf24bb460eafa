"""The command line: thin Typer commands over the library. The only package that imports Typer
and Rich. Heavy modules (torch, PyMuPDF, the model) are imported inside command bodies so that
``ixcdoc --help`` stays fast.

``app`` (the Typer app, error handling), ``options`` (the options the commands share),
``running`` (a run's load, Ctrl-C and summary line), ``display`` (a batch run drawn with Rich),
then one module per command or group of commands. Commands are listed in ``--help`` in the
order their modules are imported here.
"""

from __future__ import annotations

from ixcdoc.cli import plan as _plan  # noqa: F401 - registers the commands on ``app``

# isort: split
from ixcdoc.cli import commands as _commands  # noqa: F401
from ixcdoc.cli import evaluate as _evaluate  # noqa: F401
from ixcdoc.cli import merge as _merge  # noqa: F401
from ixcdoc.cli import serving as _serving  # noqa: F401
from ixcdoc.cli import view as _view  # noqa: F401

# isort: split
from ixcdoc.cli import setup as _setup  # noqa: F401 - last: setup commands close the list
from ixcdoc.cli.app import app, main

__all__ = ["app", "main"]
