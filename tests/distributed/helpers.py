"""What the distributed tests share: a folder of mixed inputs, and records compared without
what depends on where a page ran."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ixcdoc.records import PageRecord
from tests.cli.helpers import corrupt_pdf, text_pdf, text_png, white_png


def mixed_folder(root: Path) -> Path:
    """Images, a blank page, a two-page PDF with a text layer, a corrupt PDF, and PNG bytes
    named .pdf (flagged type_mismatch: Ray records must carry the flags one machine writes)."""
    text_png(root / "a.png", "alpha")
    text_png(root / "shot.png", "misnamed").rename(root / "misnamed.pdf")
    text_png(root / "b.png", "beta", size=(200, 100))
    white_png(root / "blank.png")
    text_pdf(root / "two.pdf", ["hello page one", "page two"])
    corrupt_pdf(root / "bad.pdf")
    return root


def comparable(rec: PageRecord) -> dict[str, Any]:
    """What must not depend on where a page ran (times, worker and device left out)."""
    d = rec.to_dict()
    for name in ("created_at", "timings", "precision", "device", "worker"):
        d.pop(name, None)
    return d


def by_page(records: list[PageRecord]) -> dict[tuple[str, int | None], dict[str, Any]]:
    return {(r.source, r.page): comparable(r) for r in records}
