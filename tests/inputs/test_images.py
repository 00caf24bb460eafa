"""Raster images: formats, frames, EXIF orientation, colour modes -> RGB, size limits."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ixcdoc.errors import InputError
from ixcdoc.inputs import ImageDocument, open_bytes, open_document, to_rgb
from tests.inputs.builders import noise_image, png_bytes, png_header_only


def encode(im: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def rendered(data: bytes, page: int = 1, **kw: object) -> np.ndarray:
    with open_bytes(data, **kw) as doc:  # type: ignore[arg-type]
        before = doc.page_info(page)  # what plan and the tier choice see, before any decode
        r = doc.render(page)
        assert r.image.mode == "RGB"
        assert r.image.size == (before.native_w, before.native_h)
        return np.asarray(r.image)


@pytest.mark.parametrize(
    ("fmt", "save"),
    [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True})],
)
def test_lossless_formats_round_trip_exactly(fmt: str, save: dict[str, object]) -> None:
    rgb = np.stack([noise_image(37, 53, seed=s) for s in range(3)], axis=-1)
    data = encode(Image.fromarray(rgb), fmt, **save)
    with open_bytes(data, source="x") as doc:
        assert isinstance(doc, ImageDocument)
        assert doc.format == fmt
        assert doc.kind == "image"
        assert doc.page_count == 1
        info = doc.page_info(1)
        assert (info.native_h, info.native_w) == (37, 53)
        assert info.dpi is None
        assert info.dpi_rule == "image"
        out = np.asarray(doc.render(1).image)
    assert np.array_equal(out, rgb)


def test_jpeg_keeps_size() -> None:
    data = encode(Image.new("RGB", (123, 45), (10, 200, 30)), "JPEG", quality=95)
    out = rendered(data)
    assert out.shape == (45, 123, 3)
    assert np.abs(out[20, 60].astype(int) - (10, 200, 30)).max() <= 3


def test_exif_orientation_6_swaps_dimensions_and_rotates() -> None:
    # Stored 300 wide x 200 high, red block top-left; orientation 6 = rotate 90° clockwise
    # for display, so the display is 200 wide x 300 high with the red block top-right.
    im = Image.new("RGB", (300, 200), (255, 255, 255))
    im.paste((255, 0, 0), (0, 0, 100, 80))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(im, "JPEG", quality=95, exif=exif.tobytes())
    with open_bytes(data) as doc:
        info = doc.page_info(1)
        assert (info.native_h, info.native_w) == (300, 200)
        assert "orientation 6" in info.dpi_rule
        out = np.asarray(doc.render(1).image).astype(int)
    assert out.shape == (300, 200, 3)
    assert np.abs(out[20, 180] - (255, 0, 0)).max() < 40  # top-right: red
    assert np.abs(out[20, 20] - (255, 255, 255)).max() < 40  # top-left: white
    assert np.abs(out[280, 20] - (255, 255, 255)).max() < 40


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_every_exif_orientation_matches_pillow_and_page_info(orientation: int, fmt: str) -> None:
    from PIL import ImageOps

    stored = Image.fromarray(np.stack([noise_image(30, 50, seed=s) for s in range(3)], axis=-1))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, fmt, exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))  # Pillow's own table
    with open_bytes(data) as doc:
        before = doc.page_info(1)  # size known before rendering: 5-8 stand on their side
        assert before.size == ((50, 30) if orientation >= 5 else (30, 50))
        out = np.asarray(doc.render(1).image)
    assert out.shape[:2] == before.size
    assert np.array_equal(out, want)


def test_exif_orientation_in_png_is_applied() -> None:
    im = Image.new("RGB", (40, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 8
    data = png_bytes(im, exif=exif.tobytes())
    assert rendered(data).shape == (40, 10, 3)


def test_alpha_is_composited_on_white() -> None:
    px = [(200, 40, 0, 0), (200, 40, 0, 255), (200, 40, 0, 128), (0, 0, 255, 64)]
    im = Image.new("RGBA", (4, 1))
    for x, p in enumerate(px):
        im.putpixel((x, 0), p)
    out = rendered(png_bytes(im)).astype(int)[0]
    for got, (r, g, b, a) in zip(out, px, strict=True):
        want = [c * a / 255 + 255 * (1 - a / 255) for c in (r, g, b)]
        assert np.abs(got - want).max() <= 1, (got, want)
    assert tuple(out[0]) == (255, 255, 255)  # fully transparent -> white, not black
    assert tuple(out[1]) == (200, 40, 0)


def test_grey_alpha_la_on_white() -> None:
    im = Image.new("LA", (1, 1), (0, 51))  # black at 20 % opacity
    out = rendered(png_bytes(im)).astype(int)[0, 0]
    assert np.abs(out - 204).max() <= 1  # 255 * 0.8


def test_palette_with_transparency() -> None:
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 128, 0, 0, 0, 0] + [0] * (256 * 3 - 9))
    for x, idx in enumerate((0, 1, 2)):
        im.putpixel((x, 0), idx)
    data = png_bytes(im, transparency=2)  # index 2 (black) is transparent
    out = rendered(data)[0]
    assert [tuple(int(v) for v in p) for p in out] == [(255, 0, 0), (0, 128, 0), (255, 255, 255)]


def test_palette_without_transparency() -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([10, 20, 30, 40, 50, 60] + [0] * (256 * 3 - 6))
    im.putpixel((1, 0), 1)
    out = rendered(encode(im, "BMP"))[0]
    assert [tuple(int(v) for v in p) for p in out] == [(10, 20, 30), (40, 50, 60)]


def test_cmyk_uses_the_standard_formula() -> None:
    values = [(10, 20, 30, 40), (200, 100, 50, 250), (0, 255, 255, 0), (0, 0, 0, 0)]
    im = Image.new("CMYK", (len(values), 1))
    for x, v in enumerate(values):
        im.putpixel((x, 0), v)
    out = rendered(encode(im, "TIFF")).astype(int)[0]
    for got, (c, m, y, k) in zip(out, values, strict=True):
        want = [(255 - ch) * (255 - k) / 255 for ch in (c, m, y)]
        assert np.abs(got - want).max() <= 1, (got, want)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_is_scaled_not_clipped(fmt: str) -> None:
    values = np.array([[0, 257, 1000, 32896, 40000, 65535]], dtype=np.uint16)
    im = Image.fromarray(values)
    assert im.mode == "I;16"
    out = rendered(encode(im, fmt)).astype(int)[0]
    want = [round(int(v) * 255 / 65535) for v in values[0]]  # 0, 1, 4, 128, 156, 255
    assert out[:, 0].tolist() == want
    assert (out[:, 0] == out[:, 1]).all() and (out[:, 1] == out[:, 2]).all()


def test_32_bit_int_mode_is_read_as_16_bit() -> None:
    im = Image.fromarray(np.array([[0, 65535, 70000, -5]], dtype=np.int32))
    assert im.mode == "I"
    out = to_rgb(im)
    assert np.asarray(out)[0, :, 0].tolist() == [0, 255, 255, 0]


def test_float_mode() -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(unit))[0, :, 0].tolist() == [0, 128, 255]
    wide = Image.fromarray(np.array([[-3.0, 100.0, 300.0]], dtype=np.float32))
    assert np.asarray(to_rgb(wide))[0, :, 0].tolist() == [0, 100, 255]


@pytest.mark.parametrize(("mode", "value", "want"), [("L", 77, 77), ("1", 1, 255), ("1", 0, 0)])
def test_greyscale_modes(mode: str, value: int, want: int) -> None:
    out = rendered(png_bytes(Image.new(mode, (2, 2), value)))
    assert (out == want).all()


def test_tiff_every_frame_is_a_page(tmp_path: Path) -> None:
    frames = [
        Image.new("RGB", (30, 20), (255, 0, 0)),
        Image.new("L", (40, 50), 100),
        Image.new("RGB", (10, 10), (0, 0, 255)),
    ]
    path = tmp_path / "multi.tif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with open_document(path) as doc:
        assert doc.format == "TIFF"
        assert doc.page_count == 3
        sizes = [doc.page_info(n).size for n in (1, 2, 3)]
        # Render out of order: each page stands alone.
        third = np.asarray(doc.render(3).image)
        first = np.asarray(doc.render(1).image)
        second = np.asarray(doc.render(2).image)
    assert sizes == [(20, 30), (50, 40), (10, 10)]
    assert tuple(first[0, 0]) == (255, 0, 0)
    assert tuple(second[0, 0]) == (100, 100, 100)
    assert third.shape == (10, 10, 3) and tuple(third[0, 0]) == (0, 0, 255)


def test_gif_first_frame_only() -> None:
    frames = [Image.new("RGB", (16, 12), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    with open_bytes(data) as doc:
        assert doc.format == "GIF"
        assert doc.page_count == 1
        assert doc.note is not None and "first frame" in doc.note
        out = np.asarray(doc.render(1).image)
        with pytest.raises(InputError) as info:
            doc.render(2)
    assert info.value.code == "page_out_of_range"
    assert out.shape == (12, 16, 3)
    assert tuple(out[5, 5]) == (255, 0, 0)


def test_images_have_no_text_layer() -> None:
    with open_bytes(png_bytes(Image.new("RGB", (4, 4)))) as doc:
        assert not doc.has_text_layer(1)
        assert doc.page_text(1) == ""


def test_bomb_header_refused_before_decoding() -> None:
    data = png_header_only(100_000, 100_000)  # 10 gigapixels claimed, a few bytes of data
    saved = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        with pytest.raises(InputError) as info:
            open_bytes(data, source="bomb.png")
    assert saved == Image.MAX_IMAGE_PIXELS  # PIL's global limit is restored
    e = info.value
    assert e.code == "too_large"
    assert "100000x100000" in e.message
    assert "--max-pixels" in e.message
    assert not isinstance(e.__cause__, Image.DecompressionBombError)


def test_large_image_with_lowered_max_pixels(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (2000, 1500), 255).save(path)
    with pytest.raises(InputError) as info:
        open_document(path, max_pixels=2_999_999)
    assert info.value.code == "too_large"
    assert "2000x1500" in info.value.message
    with open_document(path, max_pixels=3_000_000) as doc:
        assert doc.render(1).image.size == (2000, 1500)


def test_max_pixels_above_pil_limit_is_honoured() -> None:
    # 200 MP is over PIL's own hard limit (~179 MP); our larger --max-pixels must win.
    data = png_header_only(20_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_bytes(data, max_pixels=300_000_000) as doc:
            assert doc.page_info(1).size == (10_000, 20_000)


def test_tiff_frame_over_limit_fails_only_that_page(tmp_path: Path) -> None:
    path = tmp_path / "two.tif"
    small, big = Image.new("L", (10, 10), 0), Image.new("L", (100, 100), 0)
    small.save(path, save_all=True, append_images=[big])
    with open_document(path, max_pixels=1000) as doc:
        assert doc.render(1).image.size == (10, 10)
        with pytest.raises(InputError) as info:
            doc.page_info(2)
    assert info.value.code == "too_large"
    assert info.value.page == 2


def test_truncated_image_fails_at_render_with_page(tmp_path: Path) -> None:
    data = png_bytes(Image.fromarray(noise_image(200, 200)))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with open_document(path) as doc:  # the header is intact
        assert doc.page_info(1).size == (200, 200)
        with pytest.raises(InputError) as info:
            doc.render(1)
    assert info.value.code == "corrupt"
    assert info.value.page == 1
    assert "cut.png page 1" in info.value.message
