"""Fixtures for the inputs tests (builders live in tests/inputs/builders.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pymupdf
import pytest

from tests.inputs.builders import LETTER, add_text_page


@pytest.fixture
def save_pdf(tmp_path: Path) -> Callable[..., Path]:
    """save_pdf(doc, name="x.pdf", **save_kwargs) -> path in tmp_path."""

    def save(doc: pymupdf.Document, name: str = "doc.pdf", **kwargs: object) -> Path:
        path = tmp_path / name
        doc.save(path, **kwargs)
        return path

    return save


@pytest.fixture
def text_pdf(tmp_path: Path) -> Callable[..., Path]:
    """text_pdf(spans, name=..., size=..., rotate=...) -> a one-page text PDF."""

    def make(
        spans: Sequence[tuple[float, str]],
        name: str = "text.pdf",
        size: tuple[float, float] = LETTER,
        rotate: int = 0,
    ) -> Path:
        doc = pymupdf.open()
        add_text_page(doc, spans, size=size, rotate=rotate)
        path = tmp_path / name
        doc.save(path)
        return path

    return make
