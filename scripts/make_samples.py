"""Regenerate the sample inputs in samples/ (deterministic: same bytes on every run).

    python scripts/make_samples.py [OUTDIR]

Uses PyMuPDF and Pillow only (fonts: the Base-14 Nimbus fonts that ship inside PyMuPDF).

- paper.pdf       2-page born-digital paper: 18-pt title, 10-pt body (Times), 9-pt table,
                  8-pt footnote. Its body text renders at 72 * 24 / 10 = 172.8 dpi.
- scan.pdf        2-page scanned-style letter/invoice: one 1700x2200 greyscale JPEG per page
                  (200 dpi on a letter page), slightly skewed, with paper tone and noise.
- screenshot.png  an application's error dialog, 960x540.
- chart.png       a bar chart (quarterly revenue) with axis labels and values, 900x600.
"""

from __future__ import annotations

import io
import random
import sys
from pathlib import Path

import pymupdf
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

LETTER = (612, 792)  # points (width, height) at the PDF boundary

TITLE = "Reading the Fine Print: Native-Resolution Question Answering over Documents"
AUTHORS = "A. Example, B. Sample and C. Placeholder  ·  Institute for Document Studies"
ABSTRACT = (
    "Vision-language models answer questions about pages, but most runners shrink every page "
    "to a fixed size before the model sees it, and small print is lost. We measure how much "
    "accuracy this costs on three public benchmarks and show that rendering each page at its "
    "native resolution, then choosing how many 336-pixel crops the model reads, recovers most "
    "of the loss at a predictable cost in image tokens."
)
BODY_1 = [
    (
        "1  Introduction",
        "Documents are dense. A single page of a scientific paper holds a title, two columns "
        "of running text, footnotes set two points smaller than the body, and tables whose "
        "cells are narrower than a thumbnail. A model that reads such a page through a fixed "
        "448-pixel window sees a blur where the numbers were. InternLM-XComposer2-4KHD lifts "
        "this limit: it cuts a page into a grid of 336-pixel crops, up to 55 of them, and "
        "reads each crop at full detail together with one global view of the whole page.",
    ),
    (
        "",
        "The number of crops is a choice. More crops keep more detail but cost more image "
        "tokens, more memory and more time. We call the maximum number of crops the HD tier "
        "and ask a simple question: what is the smallest tier at which a page loses nothing? "
        "The answer depends on the page, not on the model, so it can be decided before any "
        "model runs.",
    ),
    (
        "2  Method",
        "We render born-digital pages so that the body text is 24 pixels per em, which is "
        "what a 10-point page scanned at about 170 dots per inch looks like. Scanned pages "
        "keep the resolution of their embedded image. The tier is then the smallest one whose "
        "crop grid holds the rendered page without shrinking it, capped by the memory the "
        "graphics card has left. Blank pages are detected and skipped before inference.",
    ),
    (
        "",
        "Memory is estimated before the run for every tier and precision. When a page would "
        "not fit, the tier is lowered one step at a time and the record says so, instead of "
        "the run stopping with an out-of-memory error on page 812 of a long batch.",
    ),
]
BODY_2 = [
    (
        "3  Results",
        "Table 1 reports answer accuracy on the DocVQA, InfoVQA and ChartQA validation sets. "
        "Native-resolution rendering with an automatic tier improves InfoVQA, the benchmark "
        "with the smallest print, by 9.6 points over a fixed low tier, while the fixed highest "
        "tier adds less than one further point at almost twice the image tokens.",
    ),
    (
        "",
        "The gains are not uniform. Pages whose smallest text is larger than about twelve "
        "pixels after rendering gain nothing from a higher tier, and the automatic choice "
        "leaves them at HD9 or HD16. Dense infographics and full-page tables gain the most: "
        "on these pages the fixed low tier shrinks the page by more than half, and digits in "
        "table cells become unreadable. Scanned pages behave like born-digital ones once "
        "they are read at the resolution of the scan itself, without a second resampling.",
    ),
    (
        "4  Conclusion",
        "Choosing the resolution per page is cheap, predictable and worth doing. The dataset "
        "with the smallest print gains the most; charts gain the least, because their labels "
        "are already large. All numbers in this sample are invented for illustration.",
    ),
]
TABLE_CAPTION = "Table 1: Answer accuracy (%) and mean image tokens per page."
TABLE_HEADER = ("Setting", "DocVQA", "InfoVQA", "ChartQA", "Tokens")
TABLE_ROWS = (
    ("Fixed HD9", "79.4", "58.1", "77.2", "1,345"),
    ("Fixed HD25", "88.6", "64.9", "80.3", "3,611"),
    ("Fixed HD55", "90.1", "68.4", "81.0", "7,861"),
    ("Auto (ours)", "89.8", "67.7", "80.9", "4,102"),
)
REFERENCES = (
    "[1] Mathew, Karatzas and Jawahar. DocVQA: a dataset for VQA on document images. 2021.",
    "[2] Mathew et al. InfographicVQA. 2022.",
    "[3] Masry et al. ChartQA: a benchmark for question answering about charts. 2022.",
    "[4] Dong et al. InternLM-XComposer2-4KHD: a pioneering large vision-language model "
    "handling resolutions from 336 pixels to 4K HD. 2024.",
)
FOOTNOTE = "* Tokens include the global view and the row separators of the crop grid."

INVOICE_LINES = (
    ("hebo", 20, "ACME OFFICE SUPPLIES LTD."),
    ("helv", 10, "14 Harbour Road, Portsmouth PO1 3AX  ·  Tel 023 9200 4411"),
    ("helv", 10, ""),
    ("hebo", 16, "INVOICE No. 2024-0193"),
    ("helv", 11, "Date: 12 March 2024            Customer: Northwind Library Services"),
    ("helv", 11, "Order reference: PO-55812       Payment terms: 30 days net"),
    ("helv", 11, ""),
)
INVOICE_ITEMS = (
    ("Archival storage boxes (pack of 10)", "4", "38.50", "154.00"),
    ("Acid-free tissue paper, 500 sheets", "2", "46.25", "92.50"),
    ("Flatbed scanner service, on site", "1", "640.00", "640.00"),
    ("Microfilm reader lamp", "3", "29.90", "89.70"),
    ("Delivery and handling", "1", "95.00", "95.00"),
)
LETTER_TEXT = (
    "Dear Ms. Okafor,",
    "",
    "Thank you for your order. The scanner service visit is booked for Thursday 21 March",
    "between 09:00 and 12:00. Our engineer, Mr. Daniel Reyes, will calibrate both flatbed",
    "units in the reading room and replace the lamp assemblies if needed.",
    "",
    "Please note that invoice 2024-0193 is due by 11 April 2024. A late payment fee of",
    "2% per month applies to overdue balances. Bank transfers should quote the invoice",
    "number as the payment reference.",
    "",
    "Kind regards,",
    "",
    "Helen Marsh",
    "Accounts Department",
)


def _save_pdf(doc: pymupdf.Document, path: Path) -> None:
    # garbage/deflate for size; no_new_id keeps the trailer /ID (and so the bytes) stable.
    doc.set_metadata({})
    doc.save(path, garbage=4, deflate=True, no_new_id=True)


def _paragraphs(page: pymupdf.Page, y: float, items: list[tuple[str, str]]) -> float:
    """Headings (12-pt bold) and justified 10-pt Times paragraphs; returns the next y."""
    left, right = 72, LETTER[0] - 72
    for heading, text in items:
        if heading:
            y += 6
            page.insert_text((left, y + 12), heading, fontname="hebo", fontsize=12)
            y += 20
        box = pymupdf.Rect(left, y, right, y + 200)
        spare = page.insert_textbox(
            box, text, fontname="tiro", fontsize=10, align=pymupdf.TEXT_ALIGN_JUSTIFY
        )
        if spare < 0:
            raise RuntimeError("paragraph does not fit its box")
        y += 200 - spare + 8
    return y


def make_paper(path: Path) -> None:
    """Two born-digital pages with a title, body text, a table and a footnote."""
    doc = pymupdf.open()
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    title_box = pymupdf.Rect(72, 72, LETTER[0] - 72, 140)
    page.insert_textbox(
        title_box, TITLE, fontname="hebo", fontsize=18, align=pymupdf.TEXT_ALIGN_CENTER
    )
    page.insert_textbox(
        pymupdf.Rect(72, 142, LETTER[0] - 72, 160),
        AUTHORS,
        fontname="helv",
        fontsize=10,
        align=pymupdf.TEXT_ALIGN_CENTER,
    )
    page.insert_text((72, 190), "Abstract", fontname="hebo", fontsize=11)
    box = pymupdf.Rect(90, 198, LETTER[0] - 90, 300)
    spare = page.insert_textbox(
        box, ABSTRACT, fontname="tiro", fontsize=10, align=pymupdf.TEXT_ALIGN_JUSTIFY
    )
    _paragraphs(page, 300 - spare + 10, BODY_1)
    page.insert_text((LETTER[0] / 2 - 3, LETTER[1] - 40), "1", fontname="tiro", fontsize=9)

    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    y = _paragraphs(page, 60, BODY_2)
    # Table 1: caption, rules, 9-pt cells.
    y += 14
    page.insert_text((72, y), TABLE_CAPTION, fontname="hebo", fontsize=9)
    cols = (72, 220, 300, 380, 460)
    y += 10
    page.draw_line((72, y), (LETTER[0] - 72, y), width=0.8)
    y += 13
    for x, cell in zip(cols, TABLE_HEADER, strict=True):
        page.insert_text((x, y), cell, fontname="hebo", fontsize=9)
    y += 6
    page.draw_line((72, y), (LETTER[0] - 72, y), width=0.5)
    for row in TABLE_ROWS:
        y += 14
        for x, cell in zip(cols, row, strict=True):
            page.insert_text((x, y), cell, fontname="tiro", fontsize=9)
    y += 6
    page.draw_line((72, y), (LETTER[0] - 72, y), width=0.8)
    y += 34
    page.insert_text((72, y), "References", fontname="hebo", fontsize=12)
    y += 8
    for ref in REFERENCES:
        box = pymupdf.Rect(72, y, LETTER[0] - 72, y + 40)
        spare = page.insert_textbox(box, ref, fontname="tiro", fontsize=9)
        y += 40 - spare + 4
    page.insert_text((72, LETTER[1] - 60), FOOTNOTE, fontname="tiro", fontsize=8)
    page.insert_text((LETTER[0] / 2 - 3, LETTER[1] - 40), "2", fontname="tiro", fontsize=9)
    _save_pdf(doc, path)


def _scan_source() -> pymupdf.Document:
    """The clean pages that get 'scanned': an invoice and its cover letter."""
    doc = pymupdf.open()
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    y = 80.0
    for font, size, text in INVOICE_LINES:
        page.insert_text((72, y), text, fontname=font, fontsize=size)
        y += size * 1.6
    cols = (72, 330, 400, 480)
    y += 10
    for x, cell in zip(cols, ("Description", "Qty", "Unit", "Amount"), strict=True):
        page.insert_text((x, y), cell, fontname="hebo", fontsize=11)
    y += 6
    page.draw_line((72, y), (540, y), width=1)
    for row in INVOICE_ITEMS:
        y += 20
        for x, cell in zip(cols, row, strict=True):
            page.insert_text((x, y), cell, fontname="helv", fontsize=11)
    y += 10
    page.draw_line((72, y), (540, y), width=1)
    for label, value in (
        ("Subtotal", "1,071.20"),
        ("VAT 20%", "214.24"),
        ("TOTAL DUE", "1,285.44"),
    ):
        y += 20
        font = "hebo" if label == "TOTAL DUE" else "helv"
        page.insert_text((330, y), label, fontname=font, fontsize=11)
        page.insert_text((480, y), value, fontname=font, fontsize=11)
    page.draw_rect(pymupdf.Rect(72, 640, 300, 720), width=1)
    page.insert_text((82, 660), "PAID BY BANK TRANSFER", fontname="hebo", fontsize=10)
    page.insert_text((82, 680), "Sort code 20-45-77", fontname="helv", fontsize=10)
    page.insert_text((82, 700), "Account 3381 0062", fontname="helv", fontsize=10)

    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    page.insert_text((72, 80), "ACME OFFICE SUPPLIES LTD.", fontname="hebo", fontsize=16)
    page.insert_text((72, 100), "12 March 2024", fontname="helv", fontsize=11)
    y = 150.0
    for line in LETTER_TEXT:
        page.insert_text((72, y), line, fontname="tiro", fontsize=12)
        y += 17
    return doc


def _noise_tile(rng: random.Random, size: int = 97) -> Image.Image:
    # A small odd-sized tile repeated over the page: deterministic, fast, and the repeat
    # does not line up with text rows.
    data = bytes(min(255, int(rng.expovariate(1 / 5.0))) for _ in range(size * size))
    return Image.frombytes("L", (size, size), data)


def scanned(page: pymupdf.Page, rng: random.Random) -> Image.Image:
    """Render a clean page at 200 dpi greyscale and make it look scanned."""
    pix = page.get_pixmap(dpi=200, colorspace=pymupdf.csGRAY, alpha=False)
    img = Image.frombytes("L", (pix.width, pix.height), pix.samples)
    # A slight skew, a soft focus, paper tone, speckle.
    img = img.rotate(0.35, resample=Image.Resampling.BICUBIC, fillcolor=255)
    img = img.filter(ImageFilter.GaussianBlur(0.7))
    img = img.point(lambda v: 26 + v * 218 // 255)  # black 26, paper 244
    tile = _noise_tile(rng)
    noise = Image.new("L", img.size)
    for y in range(0, img.height, tile.height):
        for x in range(0, img.width, tile.width):
            noise.paste(tile, (x, y))
    return ImageChops.subtract(img, noise)


def make_scan(path: Path) -> None:
    """Two pages, each one 1700x2200 greyscale JPEG filling a letter page."""
    rng = random.Random(20240312)
    src = _scan_source()
    out = pymupdf.open()
    for page in src:
        img = scanned(page, rng)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=60, optimize=True)
        dst = out.new_page(width=LETTER[0], height=LETTER[1])
        dst.insert_image(dst.rect, stream=buf.getvalue(), keep_proportion=False)
    _save_pdf(out, path)


def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(io.BytesIO(pymupdf.Font(name).buffer), size)


def make_screenshot(path: Path) -> None:
    """An application's error dialog over a dimmed window, 960x540."""
    w, h = 960, 540
    img = Image.new("RGB", (w, h), (58, 63, 71))
    d = ImageDraw.Draw(img)
    # Background app: a toolbar and some list rows.
    d.rectangle((0, 0, w, 36), fill=(40, 44, 52))
    d.text(
        (14, 9), "Backup Assistant — Library archive", font=_font("helv", 15), fill=(200, 200, 200)
    )
    for i in range(9):
        d.rectangle((20, 56 + i * 50, w - 20, 96 + i * 50), fill=(66, 72, 81))
    # The dialog.
    x0, y0, x1, y1 = 170, 110, 790, 440
    d.rectangle((x0 + 6, y0 + 6, x1 + 6, y1 + 6), fill=(30, 32, 36))  # shadow
    d.rectangle((x0, y0, x1, y1), fill=(250, 250, 250), outline=(160, 160, 160))
    d.rectangle((x0, y0, x1, y0 + 34), fill=(232, 232, 232))
    d.text((x0 + 14, y0 + 9), "Backup Assistant", font=_font("hebo", 14), fill=(30, 30, 30))
    d.text((x1 - 26, y0 + 7), "×", font=_font("helv", 18), fill=(80, 80, 80))
    # Error icon.
    d.ellipse((x0 + 28, y0 + 62, x0 + 84, y0 + 118), fill=(210, 45, 45))
    d.text((x0 + 50, y0 + 66), "!", font=_font("hebo", 40), fill=(255, 255, 255))
    d.text((x0 + 110, y0 + 62), "Backup failed", font=_font("hebo", 24), fill=(20, 20, 20))
    body = _font("helv", 16)
    lines = (
        "The backup could not be completed because the destination",
        'drive "Archive (E:)" is full. 412 MB more space is needed.',
        "",
        "Error 0x80070070 (ERROR_DISK_FULL)",
        "Last successful backup: 3 March 2024, 22:15",
    )
    for i, line in enumerate(lines):
        d.text((x0 + 110, y0 + 104 + i * 24), line, font=body, fill=(40, 40, 40))
    # Buttons.
    button = _font("helv", 15)
    for label, bx, primary in (
        ("Details", x0 + 110, False),
        ("Retry", x1 - 230, True),
        ("Cancel", x1 - 120, False),
    ):
        fill, ink = ((0, 103, 192), (255, 255, 255)) if primary else ((236, 236, 236), (20, 20, 20))
        d.rectangle((bx, y1 - 56, bx + 100, y1 - 22), fill=fill, outline=(150, 150, 150))
        tw = d.textlength(label, font=button)
        d.text((bx + (100 - tw) / 2, y1 - 48), label, font=button, fill=ink)
    img.save(path, "PNG", optimize=True)


def make_chart(path: Path) -> None:
    """A bar chart of quarterly revenue with a title, axis labels, ticks and bar values."""
    w, h = 900, 600
    img = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    title, label, small = _font("hebo", 24), _font("helv", 17), _font("helv", 15)
    d.text((w / 2, 30), "Quarterly revenue 2024", font=title, fill=(20, 20, 20), anchor="mt")
    left, right, top, bottom = 110, 850, 90, 500
    vmax = 25.0
    for tick in range(0, 26, 5):
        y = bottom - (bottom - top) * tick / vmax
        d.line((left, y, right, y), fill=(225, 225, 225) if tick else (40, 40, 40), width=1)
        d.text((left - 12, y), f"{tick}", font=small, fill=(60, 60, 60), anchor="rm")
    d.line((left, top, left, bottom), fill=(40, 40, 40), width=2)
    values = (("Q1", 12.4), ("Q2", 15.1), ("Q3", 17.8), ("Q4", 21.3))
    slot = (right - left) / len(values)
    for i, (q, v) in enumerate(values):
        cx = left + slot * (i + 0.5)
        y = bottom - (bottom - top) * v / vmax
        d.rectangle((cx - 55, y, cx + 55, bottom - 1), fill=(52, 101, 164))
        d.text((cx, y - 8), f"{v:.1f}", font=label, fill=(20, 20, 20), anchor="mb")
        d.text((cx, bottom + 12), q, font=label, fill=(20, 20, 20), anchor="mt")
    d.text(((left + right) / 2, bottom + 50), "Quarter", font=label, fill=(20, 20, 20), anchor="mt")
    # Rotated y-axis label.
    ylab = Image.new("RGBA", (260, 30), (255, 255, 255, 0))
    ImageDraw.Draw(ylab).text(
        (130, 15), "Revenue (USD millions)", font=label, fill=(20, 20, 20), anchor="mm"
    )
    ylab = ylab.rotate(90, expand=True)
    img.paste(ylab, (25, (top + bottom) // 2 - 130), ylab)
    img.save(path, "PNG", optimize=True)


def main(outdir: Path) -> None:
    """Write all samples into ``outdir``."""
    outdir.mkdir(parents=True, exist_ok=True)
    make_paper(outdir / "paper.pdf")
    make_scan(outdir / "scan.pdf")
    make_screenshot(outdir / "screenshot.png")
    make_chart(outdir / "chart.png")
    for p in sorted(outdir.iterdir()):
        if p.suffix in (".pdf", ".png"):
            print(f"{p}  {p.stat().st_size:,} bytes")


if __name__ == "__main__":
    main(
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parent.parent / "samples"
    )
