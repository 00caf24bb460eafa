"""The package surface: lazy exports, no torch, no heavy imports for a --pages callback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ixcdoc.inputs as inputs

PACKAGE = Path(inputs.__file__).parent


def test_every_exported_name_resolves() -> None:
    for name in inputs.__all__:
        assert getattr(inputs, name) is not None, name
    assert sorted(inputs.__all__) == sorted(inputs._WHERE)


def test_page_spec_import_is_light() -> None:
    code = (
        "import sys; from ixcdoc.inputs import parse_page_spec; parse_page_spec('1-2'); "
        "print(sorted(m for m in ('pymupdf', 'PIL', 'numpy', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_no_torch_in_inputs() -> None:
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text, path.name
