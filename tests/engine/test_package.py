"""The package's lazy exports: ``ChatRequest`` without torch, the engine's names on first use."""

from __future__ import annotations

import subprocess
import sys


def test_chat_request_export_stays_light() -> None:
    code = "import sys, ixcdoc; ixcdoc.ChatRequest; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_engine_names_load_on_first_use() -> None:
    import ixcdoc.engine as pkg
    from ixcdoc.engine.engine import Engine
    from ixcdoc.engine.prompts import Loaded
    from ixcdoc.engine.sequence import Handle

    assert (pkg.Engine, pkg.Handle, pkg.Loaded) == (Engine, Handle, Loaded)
