"""The feeder: direct-size PDF rendering, parity for scans and images, order, errors, cleanup."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from PIL import Image

from ixcdoc.errors import InputError, IxcdocError
from ixcdoc.feeder import SHM_PREFIX, FedPage, Feeder, FeedItem, shm_prefix
from ixcdoc.inputs import open_bytes, open_document
from ixcdoc.preprocess import hd_transform
from ixcdoc.tiling import hd_geometry
from tests.inputs.builders import add_text_page, noise_image

TILE = 56  # small crops keep every page a few hundred pixels
CRASH_SIZE = (777, 555)  # a native size the crashing tier function below refuses to survive


def _text_doc(sizes: list[tuple[float, float]], rotate: int = 0) -> pymupdf.Document:
    doc = pymupdf.open()
    for i, size in enumerate(sizes):
        add_text_page(
            doc, [(24.0, f"Page {i + 1}"), (12.0, "Body text, and a rule below.")], size=size
        )
        page = doc[-1]
        page.draw_rect(pymupdf.Rect(10, 10, size[0] - 10, size[1] - 10), color=(0, 0, 1))
        if rotate:
            page.set_rotation(rotate)
    return doc


def _scan_pdf(path: Path, pages: int = 2) -> Path:
    doc = pymupdf.open()
    for i in range(pages):
        img = Image.fromarray(noise_image(110 + 10 * i, 85, seed=i), "L")
        buf = io.BytesIO()
        img.save(buf, "PNG")
        page = doc.new_page(width=85 * 72 / 50, height=(110 + 10 * i) * 72 / 50)  # 50 dpi
        page.insert_image(page.rect, stream=buf.getvalue())
    doc.save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("feed")
    paper = d / "paper.pdf"
    # 48-pt type: a 72-dpi render, so a letter page stays ~600 px and the test fast
    doc = pymupdf.open()
    for i in range(5):
        add_text_page(doc, [(48.0, f"Page {i + 1}"), (48.0, "Large type")], size=(306, 396))
    doc.save(paper)
    png = d / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (70, 130, 3), np.uint8)).save(png)
    cut = d / "cut.png"
    cut.write_bytes(png.read_bytes()[:200])
    bad = d / "bad.pdf"
    bad.write_bytes(b"%PDF-1.7\n" + b"\x00garbage" * 50)
    return {"paper": paper, "scan": _scan_pdf(d / "scan.pdf"), "png": png, "cut": cut, "bad": bad}


@pytest.fixture(scope="module")
def pool() -> Iterator[Feeder]:
    with Feeder(workers=2, depth=3, max_hd=9, max_tile=TILE) as feeder:
        yield feeder


def _ours() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(shm_prefix())}


def _plain_render(page: pymupdf.Page, h: int, w: int) -> np.ndarray:
    """An independent reference: PyMuPDF's own get_pixmap at exactly (h, w)."""
    r = page.rect
    pix = page.get_pixmap(
        matrix=pymupdf.Matrix(w / r.width, h / r.height), colorspace=pymupdf.csRGB, alpha=False
    )
    assert (pix.height, pix.width) == (h, w)
    return np.frombuffer(pix.samples, np.uint8).reshape(h, pix.stride)[:, : 3 * w].reshape(h, w, 3)


SIZES = [(612, 792), (792, 612), (300, 301), (595.3, 841.9), (100, 700), (700, 100), (1, 40)]


@pytest.mark.parametrize("rotate", [0, 90])
def test_render_hd_hits_the_exact_geometry_and_equals_a_plain_render(
    tmp_path: Path, rotate: int
) -> None:
    path = tmp_path / "sizes.pdf"
    _text_doc([(w, h) for w, h in SIZES], rotate=rotate).save(path)
    plain = pymupdf.open(path)
    seen = set()
    with open_document(path) as doc:
        for n in range(1, doc.page_count + 1):
            info = doc.page_info(n)
            for hd, tile in [(1, TILE), (4, TILE), (9, TILE), (25, TILE), (55, TILE), (2, 336)]:
                g = hd_geometry(info.native_h, info.native_w, hd, tile)
                out = doc.render_hd(n, g)
                assert out.shape == (g.padded_h, g.padded_w, 3)
                top, left = g.pad_top, g.pad_left
                page = out[top : top + g.resized_h, left : left + g.resized_w]
                assert np.array_equal(page, _plain_render(plain[n - 1], g.resized_h, g.resized_w))
                pad = np.ones(out.shape[:2], bool)
                pad[top : top + g.resized_h, left : left + g.resized_w] = False
                assert (out[pad] == 255).all()
                seen.add((g.transposed, g.pad_top + g.pad_bottom > 0, g.pad_left + g.pad_right > 0))
    # portrait and landscape pages, padding on each axis: every branch of the geometry ran
    assert {s[0] for s in seen} == {True, False}
    assert any(s[1] for s in seen) and any(s[2] for s in seen)


def test_the_analysis_and_the_next_render_interpret_the_page_once(
    files, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pymupdf.Page.get_displaylist
    lists: list[int] = []

    def counted(self: pymupdf.Page, *a: object, **k: object) -> pymupdf.DisplayList:
        lists.append(self.number)
        return real(self, *a, **k)

    monkeypatch.setattr(pymupdf.Page, "get_displaylist", counted)
    with open_document(files["paper"]) as doc:
        info = doc.page_info(1)
        g = hd_geometry(info.native_h, info.native_w, 4, TILE)
        first = doc.render_hd(1, g)
        assert lists == [0]  # the analysis's list drew the page
        assert np.array_equal(doc.render_hd(1, g), first)  # a second render: a new list
        doc.page_info(2)
        doc.render(2)
        assert lists == [0, 0, 1]


def test_render_hd_fills_the_callers_array_and_rejects_a_wrong_one(files) -> None:
    with open_document(files["paper"]) as doc:
        info = doc.page_info(1)
        g = hd_geometry(info.native_h, info.native_w, 4, TILE)
        out = np.zeros((g.padded_h, g.padded_w, 3), np.uint8)  # black: must all be painted
        assert doc.render_hd(1, g, out) is out
        assert np.array_equal(out, doc.render_hd(1, g))
        with pytest.raises(ValueError, match="C-contiguous uint8"):
            doc.render_hd(1, g, np.zeros((g.padded_h, g.padded_w + 1, 3), np.uint8))


def test_scans_are_not_born_digital_text_pages_are(files, tmp_path: Path) -> None:
    with open_document(files["scan"]) as doc:
        assert [doc.born_digital(n) for n in (1, 2)] == [False, False]
    with open_document(files["paper"]) as doc:
        assert doc.born_digital(1)
    blank = tmp_path / "blank.pdf"
    d = pymupdf.open()
    d.new_page()
    d.save(blank)
    with open_document(blank) as doc:
        assert doc.born_digital(1)  # vector or empty: rendered, not resampled from a scan


@pytest.mark.parametrize("workers", [0, 2])
def test_scans_and_images_equal_hd_transform_byte_for_byte(files, pool, workers) -> None:
    items = [
        FeedItem(files["scan"], 1, hd=4, tile=TILE),
        FeedItem(files["scan"], 2, hd=9, tile=TILE),
        FeedItem(files["png"], 1, hd=4, tile=TILE),
        FeedItem(files["png"].read_bytes(), 1, hd=9, tile=TILE),
    ]
    feeder = pool if workers else Feeder(0)
    got = [p.own() for p in feeder.map(items)]
    for fed, item in zip(got, items, strict=True):
        assert fed.error is None and not fed.direct
        src = item.source
        with open_bytes(src) if isinstance(src, bytes) else open_document(src) as doc:
            want = np.asarray(hd_transform(doc.render(item.page).image, item.hd, TILE))
        assert np.array_equal(fed.pixels, want)


def _reference(items: list[FeedItem]) -> list[FedPage]:
    return [p.own() for p in Feeder(0).map(items)]


def test_pages_come_in_input_order_and_processes_equal_in_process(files, pool) -> None:
    items = [
        FeedItem(files[name], page, hd=hd, tile=TILE)
        for hd in (9, 1, 4)
        for name, page in [("paper", 1), ("scan", 2), ("paper", 4), ("png", 1), ("paper", 2)]
    ]
    want = _reference(items)
    got = [p.own() for p in pool.map(items)]
    assert [p.index for p in got] == list(range(len(items)))
    assert [p.item for p in got] == items
    for a, b in zip(want, got, strict=True):
        assert a.error is None and b.error is None
        assert a.geometry == b.geometry and a.direct == b.direct and a.info == b.info
        assert np.array_equal(a.pixels, b.pixels)
    assert {p.direct for p in got} == {True, False}  # both paths ran


def test_per_page_errors_come_back_as_the_pages_error(files, pool, tmp_path: Path) -> None:
    items = [
        FeedItem(files["paper"], 1, hd=4, tile=TILE),
        FeedItem(files["bad"], 1, hd=4, tile=TILE),
        FeedItem(files["cut"], 1, hd=4, tile=TILE),
        FeedItem(tmp_path / "missing.pdf", 1, hd=4, tile=TILE),
        FeedItem(files["paper"], 9, hd=4, tile=TILE),
        FeedItem(b"not a document at all", 1, hd=4, tile=TILE, name="stdin"),
        FeedItem(files["paper"], 2, hd=4, tile=TILE),
    ]
    for feeder in (Feeder(0), pool):
        got = list(feeder.map(items))
        assert [p.error is None for p in got] == [True, False, False, False, False, False, True]
        codes = [p.error.code for p in got if p.error is not None]
        assert codes == ["corrupt", "corrupt", "not_found", "page_out_of_range", "unsupported"]
        assert all(isinstance(p.error, InputError) for p in got if p.error is not None)
        assert got[2].error.page == 1 and "cut.png" in str(got[2].error)
        assert str(got[5].error).startswith("stdin")


def test_bytes_sources_equal_path_sources(files, pool) -> None:
    data = files["paper"].read_bytes()
    by_path = [FeedItem(files["paper"], n, hd=4, tile=TILE) for n in (1, 2, 3)]
    by_bytes = [FeedItem(data, n, hd=4, tile=TILE) for n in (1, 2, 3)]
    want = _reference(by_path)
    for _ in range(2):  # a second map: the workers got the bytes again, or kept them
        got = [p.own() for p in pool.map(by_bytes)]
        assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(want, got, strict=True))
        assert got[0].item.source is data


def test_tier_function_picks_the_tier_from_the_native_size(files, pool) -> None:
    items = [FeedItem(files["paper"], 1, tile=TILE), FeedItem(files["png"], 1, tile=TILE)]
    with Feeder(1, max_hd=9, max_tile=TILE, tier=_tier_by_width) as feeder:
        got = list(feeder.map(items))
    assert [p.hd for p in got] == [_tier_by_width(*p.info.size) for p in got] == [9, 4]


def _tier_by_width(h: int, w: int) -> int:
    return 4 if w < 200 else 9


def _crashing_tier(h: int, w: int) -> int:
    if (h, w) == CRASH_SIZE:
        os._exit(3)  # a worker dying mid-page, as MuPDF might on a hostile file
    return 4


def test_a_worker_that_dies_fails_its_page_not_the_run(files, tmp_path: Path) -> None:
    crash = tmp_path / "crash.png"
    Image.new("RGB", CRASH_SIZE[::-1], "white").save(crash)
    items = [
        FeedItem(files["paper"], 1, tile=TILE),
        FeedItem(crash, 1, tile=TILE),
        FeedItem(files["paper"], 2, tile=TILE),
        FeedItem(files["png"], 1, tile=TILE),
    ]
    with Feeder(1, max_hd=9, max_tile=TILE, tier=_crashing_tier) as feeder:
        got = [p.own() for p in feeder.map(items)]
    assert [p.error is None for p in got] == [True, False, True, True]
    assert got[1].error.code == "corrupt" and "exit code 3" in str(got[1].error)
    want = _reference([FeedItem(i.source, i.page, hd=4, tile=TILE) for i in items[2:]])
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(want, got[2:], strict=True))


def test_larger_pages_than_a_slot_travel_pickled(files) -> None:
    items = [FeedItem(files["paper"], 1, hd=25, tile=TILE)]  # 25 crops, slots hold 4
    with Feeder(1, max_hd=4, max_tile=TILE) as feeder:
        (got,) = [p.own() for p in feeder.map(items)]
    (want,) = _reference(items)
    assert not got.shared and np.array_equal(got.pixels, want.pixels)


def test_no_shared_memory_is_left_after_a_full_run_or_an_early_stop(files) -> None:
    items = [FeedItem(files["paper"], n, hd=9, tile=TILE) for n in range(1, 6)] * 3
    want = _reference(items)
    before = _ours()
    feeder = Feeder(2, depth=4, max_hd=9, max_tile=TILE)
    try:
        assert len(list(feeder.map(items))) == len(items)
        assert feeder.shm_name in _ours()  # the check below looks for the right name
        it = feeder.map(items)
        first = next(it)  # four more pages are in flight now
        assert first.shared and np.array_equal(first.pixels, want[0].pixels)
        it.close()
        # the next map after an early stop still delivers every page right
        again = [p.own() for p in feeder.map(items[:6])]
        assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(want, again, strict=False))
        name = feeder.shm_name
    finally:
        feeder.close()
    assert name not in _ours() and _ours() == before
    assert feeder.shm_name is None


def test_a_pages_pixels_stay_valid_until_the_next_page(files, pool) -> None:
    items = [FeedItem(files["paper"], n, hd=9, tile=TILE) for n in (1, 2, 3, 4, 5)]
    want = _reference(items)
    kept = []
    for fed, ref in zip(pool.map(items), want, strict=True):
        assert np.array_equal(fed.pixels, ref.pixels)
        kept.append(fed.own())
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(want, kept, strict=True))
    assert not any(k.shared for k in kept)


def test_fed_page_is_the_hd_image_the_model_takes(files) -> None:
    import torch

    from ixcdoc.preprocess import normalize_uint8
    from ixcdoc.runtime import load

    from .model.upstream import TINY_CKPT

    dm = load(TINY_CKPT, device="cpu")
    assert dm.tile == TILE
    (fed,) = Feeder(0).map([FeedItem(files["paper"], 1, hd=4, tile=TILE)])
    hd_img = fed.hd_image()
    assert hd_img.size == (fed.info.native_w, fed.info.native_h)
    x = dm.pixels(hd_img, 4)
    assert torch.equal(x, normalize_uint8(torch.from_numpy(fed.pixels)))
    other = hd_geometry(fed.info.native_h, fed.info.native_w, 1, TILE)
    assert dm.pixels(hd_img, 1).shape == (1, 3, other.padded_h, other.padded_w)  # re-rendered
    p = dm.embed_prompt([hd_img], "What does the page say?", hd=4)
    g = fed.geometry
    assert p.grids == [(g.rows, g.cols)]
    assert p.n_image_tokens == g.image_tokens(dm.config.vision.patch_size)


def test_workers_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="workers"):
        Feeder(-1)


def test_an_item_error_is_an_ixcdoc_error_that_pickles(files) -> None:
    import pickle

    (fed,) = Feeder(0).map([FeedItem(files["paper"], 7, hd=4, tile=TILE)])
    assert isinstance(fed.error, IxcdocError)
    back = pickle.loads(pickle.dumps(fed.error))
    assert type(back) is InputError and str(back) == str(fed.error) and back.code == fed.error.code


def _edge_energy(x: np.ndarray) -> float:
    grey = x.astype(np.float32).mean(axis=2)
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


def test_direct_render_is_sharper_than_resampling_a_native_render(tmp_path: Path) -> None:
    path = tmp_path / "body.pdf"
    doc = pymupdf.open()
    add_text_page(doc, [(10.0, "The quick brown fox jumps over the lazy dog. " * 2)] * 40)
    doc.save(path)
    with open_document(path) as d:
        info = d.page_info(1)  # 10-pt body: 173 dpi, 1901 x 1469
        for hd in (9, 25):
            g = hd_geometry(info.native_h, info.native_w, hd)
            direct = d.render_hd(1, g)
            old = np.asarray(hd_transform(d.render(1).image, hd))
            assert direct.shape == old.shape
            # the same page (a few grey levels apart on average), with crisper glyph edges
            assert np.abs(direct.astype(np.int16) - old).mean() < 16
            assert _edge_energy(direct) > 1.05 * _edge_energy(old)


def test_planned_tier_pickles_and_picks_what_the_planner_picks(files) -> None:
    import pickle
    from functools import partial

    from ixcdoc.feeder import planned_tier
    from ixcdoc.planning import choose_tier
    from ixcdoc.tasks import preset

    task = preset("extract")
    tier = pickle.loads(pickle.dumps(partial(planned_tier, task=task, quant="4bit")))
    items = [FeedItem(files["paper"], 1), FeedItem(files["png"], 1)]
    got = list(Feeder(0, tier=tier).map(items))
    for fed in got:
        assert fed.error is None
        assert fed.hd == choose_tier(*fed.info.size, task, quant="4bit").hd
    assert {fed.hd for fed in got} != {None}


KILLED_PARENT = """
import os, signal, sys
from multiprocessing import resource_tracker
from ixcdoc.feeder import Feeder, FeedItem
if __name__ == "__main__":
    f = Feeder(1, max_hd=4, max_tile=56)
    fed = next(f.map([FeedItem(sys.argv[1], 1, hd=4, tile=56)]))
    assert fed.error is None and f.shm_name in os.listdir("/dev/shm")
    print(f.shm_name, f._procs[0].pid, resource_tracker._resource_tracker._pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _wait_gone(pids: list[int], timeout: float) -> None:
    """Wait (no polling) until every pid has exited, through pidfds."""
    import select

    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            continue  # already gone
    try:
        pending = list(fds)
        while pending:
            ready, _, _ = select.select(pending, [], [], timeout)
            assert ready, f"processes {pids} still running after {timeout} s"
            pending = [fd for fd in pending if fd not in ready]
    finally:
        for fd in fds:
            os.close(fd)


def test_a_killed_parent_leaves_no_shared_memory(files, tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "killed.py"
    script.write_text(KILLED_PARENT)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, str(script), str(files["paper"])],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == -9, proc.stderr
    name, worker, tracker = proc.stdout.split()
    assert name.startswith(SHM_PREFIX)
    _wait_gone([int(worker), int(tracker)], timeout=60)
    assert name not in os.listdir("/dev/shm")


def test_a_bad_tier_or_a_missing_tier_function_is_that_pages_usage_error(files) -> None:
    items = [
        FeedItem(files["paper"], 1, hd=0, tile=TILE),
        FeedItem(files["paper"], 1, tile=TILE),
        FeedItem(files["paper"], 1, hd=1, tile=TILE),
    ]
    got = list(Feeder(0).map(items))
    assert [p.error.code if p.error else None for p in got] == ["usage", "usage", None]
    assert "tier" in str(got[0].error) and "Feeder(tier=" in str(got[1].error)


def test_render_hd_of_a_cropped_page_equals_a_plain_render(tmp_path: Path) -> None:
    path = tmp_path / "cropped.pdf"
    doc = _text_doc([(612, 792)])
    doc[0].set_cropbox(pymupdf.Rect(30, 50, 400, 500))  # origin off (0, 0), odd size
    doc.save(path)
    plain = pymupdf.open(path)
    with open_document(path) as d:
        info = d.page_info(1)
        g = hd_geometry(info.native_h, info.native_w, 4, TILE)
        out = d.render_hd(1, g)
    page = out[g.pad_top : g.pad_top + g.resized_h, g.pad_left : g.pad_left + g.resized_w]
    want = _plain_render(plain[0], g.resized_h, g.resized_w)
    assert np.array_equal(page, want) and (want < 128).any()


def test_blank_check_flags_blank_pages_on_both_paths(files, tmp_path: Path) -> None:
    blank_pdf = tmp_path / "blank.pdf"
    d = pymupdf.open()
    d.new_page(width=306, height=396)
    d.save(blank_pdf)
    blank_png = tmp_path / "blank.png"
    Image.new("RGB", (120, 90), (250, 250, 250)).save(blank_png)
    items = [
        FeedItem(blank_pdf, 1, hd=4, tile=TILE),
        FeedItem(files["paper"], 1, hd=4, tile=TILE),
        FeedItem(blank_png, 1, hd=4, tile=TILE),
        FeedItem(files["png"], 1, hd=4, tile=TILE),
    ]
    got = list(Feeder(0, blank_check=True).map(items))
    assert [(p.direct, p.blank) for p in got] == [
        (True, True),
        (True, False),
        (False, True),
        (False, False),
    ]
    assert {p.blank for p in Feeder(0).map(items)} == {None}  # off by default


def test_a_script_without_a_main_guard_is_told_so(tmp_path: Path) -> None:
    """Workers are spawned: they import the parent's script again. A script that starts a
    Feeder at import made each worker start Feeders of its own, and the parent said only
    'feeder worker 0 failed to start (exit code 1)' after multiprocessing's long message.
    Now the workers stop at once and the parent's error says what to write."""
    import subprocess
    import sys

    Image.fromarray(noise_image(48, 64)).save(tmp_path / "page.png")
    body = (
        "from ixcdoc.feeder import Feeder, FeedItem\n"
        "with Feeder(workers=2) as feeder:\n"
        "    for fed in feeder.map([FeedItem('page.png', 1, hd=1)]):\n"
        "        print(fed.pixels.shape)\n"
    )
    (tmp_path / "unguarded.py").write_text(body)
    guarded = "def main():\n" + "".join(f"    {line}\n" for line in body.splitlines())
    (tmp_path / "guarded.py").write_text(guarded + 'if __name__ == "__main__":\n    main()\n')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def run(script: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, script], cwd=tmp_path, capture_output=True, env=env, timeout=120
        )

    bad = run("unguarded.py")
    err = bad.stderr.decode()
    assert bad.returncode == 1
    assert err.splitlines()[-1].startswith("ixcdoc.errors.UsageError: Feeder workers are spawned")
    assert 'if __name__ == "__main__":' in err.splitlines()[-1]
    assert "bootstrapping phase" not in err  # the workers never got as far as multiprocessing
    good = run("guarded.py")
    assert good.returncode == 0, good.stderr.decode()
    assert good.stdout.decode().strip().startswith("(")
