"""PDF pages: the DPI rule (text / scan / default), native size, rotation, caps."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from PIL import Image

from ixcdoc.inputs import PdfDocument, open_document
from tests.inputs.builders import LETTER, add_image_page, add_text_page, noise_image, png_bytes

BODY = "The quick brown fox jumps over the lazy dog 0123456789"


def rule_dpi(body_pt: float) -> float:
    """The documented rule, written out independently: 72 * 24 / pt, clamped to [72, 300]."""
    return min(300.0, max(72.0, 72.0 * 24.0 / body_pt))


def px(points: float, dpi: float) -> int:
    """Pixels MuPDF produces for a length in points at a DPI (it rounds up, 0.001 slack)."""
    return math.ceil(points * dpi / 72.0 - 1e-3)


@pytest.mark.parametrize("pt", [6.0, 8.0, 9.5, 10.0, 12.0, 14.0, 20.0, 24.0])
def test_text_page_dpi_from_body_size(text_pdf: Callable[..., Path], pt: float) -> None:
    path = text_pdf([(pt, BODY)] * 5)
    with open_document(path) as doc:
        info = doc.page_info(1)
        dpi = rule_dpi(pt)
        assert info.dpi == pytest.approx(dpi, abs=0.01)
        assert (info.native_h, info.native_w) == (px(792, dpi), px(612, dpi))
        assert info.dpi_rule.startswith(f"text: body {pt:.1f}pt")
        assert info.kind == "pdf"
        rendered = doc.render(1)
        assert rendered.image.mode == "RGB"
        assert rendered.image.size == (info.native_w, info.native_h)  # PIL is (W, H)
        assert rendered.info == info
        assert rendered.render_ms >= 0


def test_twelve_point_is_144_dpi_exactly(text_pdf: Callable[..., Path]) -> None:
    with open_document(text_pdf([(12, BODY)] * 3)) as doc:
        info = doc.page_info(1)
    assert info.dpi == 144.0
    assert info.size == (1584, 1224)  # letter at 2x


@pytest.mark.parametrize(("pt", "dpi", "word"), [(4.0, 300.0, "clamped"), (48.0, 72.0, "clamped")])
def test_text_dpi_is_clamped(
    text_pdf: Callable[..., Path], pt: float, dpi: float, word: str
) -> None:
    with open_document(text_pdf([(pt, "Tiny or huge print")] * 3)) as doc:
        info = doc.page_info(1)
    assert info.dpi == dpi
    assert word in info.dpi_rule
    assert info.size == (px(792, dpi), px(612, dpi))


def test_body_size_is_the_size_with_most_characters(text_pdf: Callable[..., Path]) -> None:
    # A 24-pt title (few characters) and lots of 11-pt body: the body decides.
    spans = [(24.0, "Big title"), (9.0, "small caption text")] + [(11.0, BODY)] * 8
    with open_document(text_pdf(spans)) as doc:
        info = doc.page_info(1)
    assert info.dpi == pytest.approx(rule_dpi(11.0), abs=0.01)
    assert "body 11.0pt" in info.dpi_rule


def test_page_without_text_or_images_uses_default(tmp_path: Path) -> None:
    doc = pymupdf.open()
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    page.draw_rect(pymupdf.Rect(100, 100, 400, 300), color=(1, 0, 0), fill=(0, 0, 1))
    doc.new_page(width=LETTER[0], height=LETTER[1])  # blank
    doc.save(tmp_path / "vector.pdf")
    with open_document(tmp_path / "vector.pdf") as d:
        for n in (1, 2):
            info = d.page_info(n)
            assert info.dpi == 150.0
            assert info.size == (1650, 1275)
            assert info.dpi_rule.startswith("default 150 dpi")
            assert not d.has_text_layer(n)
            assert d.page_text(n).strip() == ""
        img = np.asarray(d.render(1).image)
        # The blue fill, at 150 dpi: (100..400 pt, 100..300 pt) -> pixel rows 209..625.
        assert tuple(img[400, 500]) == (0, 0, 255)
        assert tuple(img[10, 10]) == (255, 255, 255)


def test_text_layer_and_page_text(text_pdf: Callable[..., Path]) -> None:
    with open_document(text_pdf([(10, "Invoice total 1,285.44")])) as doc:
        assert doc.has_text_layer(1)
        assert "Invoice total 1,285.44" in doc.page_text(1)


def test_invisible_ocr_text_counts_as_text_layer(tmp_path: Path) -> None:
    doc = pymupdf.open()
    add_text_page(doc, [(10.0, "hidden OCR words")] * 4, render_mode=3)
    doc.save(tmp_path / "ocr.pdf")
    with open_document(tmp_path / "ocr.pdf") as d:
        assert d.has_text_layer(1)
        assert d.page_info(1).dpi == pytest.approx(rule_dpi(10.0), abs=0.01)
        # Invisible text renders nothing.
        assert np.asarray(d.render(1).image).min() == 255


@pytest.mark.parametrize("rotate", [0, 90, 270])
def test_scan_renders_at_embedded_image_pixels_exactly(tmp_path: Path, rotate: int) -> None:
    # 1234 x 1600 px on a letter page: 145.2 dpi across, 145.5 dpi down. The two zooms differ
    # a little, and /Rotate must swap them for the output to land on the image's pixel grid.
    h, w = 1600, 1234
    pixels = noise_image(h, w)
    doc = pymupdf.open()
    add_image_page(doc, png_bytes(Image.fromarray(pixels)), rotate=rotate)
    doc.save(tmp_path / "scan.pdf")
    expected = np.rot90(pixels, k=-(rotate // 90))
    with open_document(tmp_path / "scan.pdf") as d:
        info = d.page_info(1)
        assert info.size == expected.shape
        assert info.dpi_rule.startswith(f"scan: embedded image {w}x{h}")
        expected_dpi = 72.0 * math.sqrt((w / 612.0) * (h / 792.0))
        assert info.dpi == pytest.approx(expected_dpi, abs=0.01)
        out = np.asarray(d.render(1).image)
    assert out.shape == (*expected.shape, 3)
    # Pixel for pixel: no resampling at all (noise would not survive any).
    assert np.array_equal(out[..., 0], expected)
    assert np.array_equal(out[..., 1], expected)


@pytest.mark.parametrize("rotate", [90, 180, 270])
def test_rotated_scan_page(tmp_path: Path, rotate: int) -> None:
    h, w = 400, 300
    pixels = noise_image(h, w, seed=rotate)
    doc = pymupdf.open()
    page_size = (w * 0.72, h * 0.72)  # 100 dpi
    add_image_page(doc, png_bytes(Image.fromarray(pixels)), size=page_size, rotate=rotate)
    doc.save(tmp_path / "rot.pdf")
    # /Rotate turns the page clockwise for display.
    expected = np.rot90(pixels, k=-(rotate // 90))
    with open_document(tmp_path / "rot.pdf") as d:
        info = d.page_info(1)
        out = np.asarray(d.render(1).image)[..., 0]
    assert info.size == expected.shape
    assert out.shape == expected.shape
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("rotate", [0, 90, 270])
def test_rotated_text_page_swaps_width_and_height(
    text_pdf: Callable[..., Path], rotate: int
) -> None:
    with open_document(text_pdf([(12, BODY)] * 4, rotate=rotate)) as doc:
        info = doc.page_info(1)
        size = doc.render(1).image.size
    portrait = (1584, 1224)
    assert info.size == (portrait if rotate % 180 == 0 else portrait[::-1])
    assert size == (info.native_w, info.native_h)


def test_non_square_scan_pixels_give_square_output_at_the_finer_axis(tmp_path: Path) -> None:
    # A fax-style image: 204 dpi across, 98 dpi down (1734 x 1078 px on a letter page).
    doc = pymupdf.open()
    add_image_page(doc, png_bytes(Image.new("L", (1734, 1078), 255)))
    doc.save(tmp_path / "fax.pdf")
    with open_document(tmp_path / "fax.pdf") as d:
        info = d.page_info(1)
    dpi = 1734 / 8.5
    assert info.dpi == pytest.approx(dpi, abs=0.01)
    assert info.size == (px(792, dpi), 1734)


def test_scan_with_invisible_ocr_layer_keeps_image_size(tmp_path: Path) -> None:
    doc = pymupdf.open()
    page = add_image_page(doc, png_bytes(Image.fromarray(noise_image(1100, 850))))
    page.insert_text((72, 72), "OCR layer text " * 5, fontsize=6, render_mode=3)
    doc.save(tmp_path / "ocr-scan.pdf")
    with open_document(tmp_path / "ocr-scan.pdf") as d:
        assert d.page_info(1).size == (1100, 850)
        assert d.has_text_layer(1)


def test_visible_text_over_low_res_image_raises_dpi(tmp_path: Path) -> None:
    # A 72-dpi full-page background with real 10-pt text on top: the text rule wins.
    doc = pymupdf.open()
    page = add_image_page(doc, png_bytes(Image.new("L", (612, 792), 230)))
    for i in range(10):
        page.insert_text((72, 100 + 14 * i), BODY, fontsize=10)
    doc.save(tmp_path / "bg.pdf")
    with open_document(tmp_path / "bg.pdf") as d:
        info = d.page_info(1)
    assert info.dpi == pytest.approx(rule_dpi(10.0), abs=0.01)
    assert info.dpi_rule.startswith("text over scan")


def test_a_stamp_over_a_scan_does_not_change_its_size(tmp_path: Path) -> None:
    doc = pymupdf.open()
    page = add_image_page(doc, png_bytes(Image.new("L", (1275, 1650), 250)))
    page.insert_text((400, 770), "ABC-000123", fontsize=6)  # a Bates number
    doc.save(tmp_path / "stamped.pdf")
    with open_document(tmp_path / "stamped.pdf") as d:
        assert d.page_info(1).size == (1650, 1275)


def test_small_image_is_not_a_scan(tmp_path: Path) -> None:
    # An image over 80 % of the page (below the 85 % threshold) with no text: default DPI.
    doc = pymupdf.open()
    rect = pymupdf.Rect(0, 0, 612, 792 * 0.8)
    add_image_page(doc, png_bytes(Image.new("L", (2000, 2000), 128)), rect=rect)
    doc.save(tmp_path / "figure.pdf")
    with open_document(tmp_path / "figure.pdf") as d:
        assert d.page_info(1).dpi == 150.0


def test_highest_resolution_dominant_image_wins(tmp_path: Path) -> None:
    # Mixed raster content: a 100-dpi background and a 300-dpi layer, both full page.
    doc = pymupdf.open()
    page = add_image_page(doc, png_bytes(Image.new("L", (850, 1100), 240)))
    overlay = Image.new("LA", (2550, 3300), (0, 0))
    page.insert_image(page.rect, stream=png_bytes(overlay), keep_proportion=False)
    doc.save(tmp_path / "mrc.pdf")
    with open_document(tmp_path / "mrc.pdf") as d:
        assert d.page_info(1).size == (3300, 2550)


def test_scan_with_alpha_and_cmyk_images_render(tmp_path: Path) -> None:
    doc = pymupdf.open()
    rgba = Image.new("RGBA", (300, 400), (255, 0, 0, 0))  # fully transparent red
    add_image_page(doc, png_bytes(rgba), size=(216, 288))
    cmyk = Image.new("CMYK", (300, 400), (0, 255, 255, 0))  # pure red in CMYK
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG", quality=95)
    add_image_page(doc, buf.getvalue(), size=(216, 288))
    doc.save(tmp_path / "modes.pdf")
    with open_document(tmp_path / "modes.pdf") as d:
        first = np.asarray(d.render(1).image)
        second = np.asarray(d.render(2).image)
    assert first.shape == (400, 300, 3)
    assert first.min() >= 250  # transparent -> white page shows through
    assert second.shape == (400, 300, 3)
    r, g, b = (int(v) for v in second[200, 150])
    assert r > 180 and g < 90 and b < 90


def test_multi_page_rules_are_per_page(tmp_path: Path) -> None:
    doc = pymupdf.open()
    add_text_page(doc, [(12.0, BODY)] * 4)
    add_image_page(doc, png_bytes(Image.new("L", (1275, 1650), 200)))
    doc.new_page(width=LETTER[0], height=LETTER[1])
    add_text_page(doc, [(8.0, BODY)] * 4, size=(842.0, 595.0))  # landscape A4
    doc.save(tmp_path / "mixed.pdf")
    with open_document(tmp_path / "mixed.pdf") as d:
        assert isinstance(d, PdfDocument)
        assert d.page_count == 4
        infos = [d.page_info(n) for n in range(1, 5)]
        sizes = [d.render(n).image.size for n in range(1, 5)]
    assert [i.page for i in infos] == [1, 2, 3, 4]
    assert all(i.page_count == 4 for i in infos)
    assert infos[0].size == (1584, 1224)
    assert infos[1].size == (1650, 1275)
    assert infos[2].dpi == 150.0
    assert infos[3].size == (px(595, 216), px(842, 216))
    assert sizes == [(i.native_w, i.native_h) for i in infos]


def test_max_pixels_lowers_pdf_dpi_instead_of_failing(text_pdf: Callable[..., Path]) -> None:
    limit = 1_000_000
    with open_document(text_pdf([(12, BODY)] * 3), max_pixels=limit) as doc:
        info = doc.page_info(1)
        image = doc.render(1).image
    assert info.pixels <= limit
    assert info.pixels > 0.98 * limit  # lowered just enough
    assert info.dpi is not None and info.dpi < 144
    assert "--max-pixels" in info.dpi_rule
    assert image.size == (info.native_w, info.native_h)
    assert abs(info.native_h / info.native_w - 792 / 612) < 0.01


def test_page_info_does_not_rasterize(
    text_pdf: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("page_info must not rasterize")

    monkeypatch.setattr(pymupdf.Page, "get_pixmap", refuse)
    with open_document(text_pdf([(12, BODY)])) as doc:
        assert doc.page_info(1).size == (1584, 1224)


def test_render_error_names_the_page_and_spares_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = pymupdf.open()
    for _ in range(3):
        add_text_page(doc, [(12.0, BODY)])
    doc.save(tmp_path / "three.pdf")
    real = pymupdf.DisplayList.get_pixmap  # what a page render draws from
    calls: list[int] = []

    def flaky(self: pymupdf.DisplayList, *args: object, **kwargs: object) -> pymupdf.Pixmap:
        calls.append(1)
        if len(calls) == 2:  # the second render: page 2
            raise RuntimeError("code=2: broken content stream")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pymupdf.DisplayList, "get_pixmap", flaky)
    from ixcdoc.errors import InputError

    with open_document(tmp_path / "three.pdf") as d:
        assert d.render(1).image.size == (1224, 1584)
        with pytest.raises(InputError) as info:
            d.render(2)
        assert d.render(3).image.size == (1224, 1584)
    assert info.value.code == "corrupt"
    assert info.value.page == 2
    assert "three.pdf page 2" in info.value.message


# --- the pixel cap and text that needs more (issue 9, item 10) ---------------------------------


def test_cap_below_what_the_text_needs_is_flagged_low_dpi(text_pdf: Callable[..., Path]) -> None:
    # A 1440-pt square page of 4-pt text capped at 100,000 pixels: 316 px across is ~16 dpi,
    # so an em of 4 pt is 4 * 15.8 / 72 = 0.9 px, far under the 10 px glyphs need.
    path = text_pdf([(4.0, BODY)] * 20, size=(1440.0, 1440.0))
    with open_document(path, max_pixels=100_000) as doc:
        info = doc.page_info(1)
        assert info.dpi is not None and info.dpi < 16.0
        assert info.dpi_capped
        assert "4.0pt text is 0.9 px per em, under the 10 px it needs" in info.dpi_rule
        assert doc.page_flags(1) == ("low_dpi",)
        assert doc.has_text_layer(1)  # so the runner never records it blank, however it looks


def test_cap_that_leaves_text_legible_is_not_flagged(text_pdf: Callable[..., Path]) -> None:
    with open_document(text_pdf([(12, BODY)] * 3), max_pixels=1_000_000) as doc:
        info = doc.page_info(1)
        assert "--max-pixels" in info.dpi_rule  # lowered from 144 to ~99 dpi: 16 px per em
        assert not info.dpi_capped
        assert doc.page_flags(1) == ()


# --- body size ties (issue 9, item 19) ---------------------------------------------------------


@pytest.mark.parametrize(
    "spans",
    [
        [(10.0, "x" * 40), (14.0, "y" * 40)],
        [(14.0, "y" * 40), (10.0, "x" * 40)],  # order on the page does not matter
        [(14.0, "y" * 20), (10.0, "x" * 40), (14.0, "y" * 20)],
    ],
)
def test_body_size_tie_goes_to_the_smaller_size(
    text_pdf: Callable[..., Path], spans: list[tuple[float, str]]
) -> None:
    # Equal character counts at 10 and 14 pt: the smaller size wins, since small text is what
    # needs the pixels (14 pt at 10 pt's DPI is only sharper).
    with open_document(text_pdf(spans)) as doc:
        info = doc.page_info(1)
    assert info.dpi == pytest.approx(rule_dpi(10.0), abs=0.01)
    assert info.dpi_rule.startswith("text: body 10.0pt")


def _inline_image_pdf(path: Path, pixels: np.ndarray, box: tuple[float, ...]) -> None:
    """A 216 x 288 pt page whose content draws ``pixels`` (grey) as an inline image (BI ...
    EI, not in the page's resources) over ``box`` (x0, y0, width, height in points)."""
    h, w = pixels.shape
    x0, y0, bw, bh = box
    doc = pymupdf.open()
    page = doc.new_page(width=216, height=288)
    head = f"q {bw} 0 0 {bh} {x0} {y0} cm BI /W {w} /H {h} /CS /G /BPC 8 ID ".encode()
    xref = doc.get_new_xref()
    doc.update_object(xref, "<<>>")
    doc.update_stream(xref, head + pixels.tobytes() + b" EI Q")
    page.set_contents(xref)
    doc.save(path)


@pytest.mark.parametrize("where", ["inside", "bleeding past the edges", "inside a form"])
def test_a_scan_drawn_as_an_inline_image_is_a_scan(tmp_path: Path, where: str) -> None:
    """Inline images are not in the page's resources; the analysis must still see them,
    including one that overruns the page by a point and one inside a form XObject."""
    h, w = 400, 300  # 100 dpi over the whole 216 x 288 pt page
    pixels = noise_image(h, w)
    box = (-1, -1, 218, 290) if where.startswith("bleeding") else (0, 0, 216, 288)
    _inline_image_pdf(tmp_path / "inline.pdf", pixels, box)
    path = tmp_path / "inline.pdf"
    if where == "inside a form":  # the page shows the first one as a form XObject
        src = pymupdf.open(path)
        doc = pymupdf.open()
        page = doc.new_page(width=216, height=288)
        page.show_pdf_page(page.rect, src, 0)
        path = tmp_path / "form.pdf"
        doc.save(path)
    with open_document(path) as d:
        info = d.page_info(1)
        assert info.dpi_rule.startswith(f"scan: embedded image {w}x{h}")
        if where == "inside":
            assert info.size == (h, w)
            assert np.array_equal(np.asarray(d.render(1).image)[..., 0], pixels)  # its own grid
