"""run_batch with a tiny real model: render-ahead modes agree, resume state, errors pickle."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pymupdf
import pytest
from PIL import Image, ImageDraw

from ixcdoc.errors import InputError, IxcdocError, UsageError
from ixcdoc.pipeline import Runner, RunSpec, lower_tier, run_batch
from ixcdoc.records import load_existing
from ixcdoc.runtime import load
from ixcdoc.tasks import EXTRACT
from ixcdoc.tiling import hd_geometry
from ixcdoc.tinyckpt import write_tiny_checkpoint


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")
    return Runner(load(ckpt, device="cpu"), model_name="tiny")


@pytest.fixture
def inputs(tmp_path: Path) -> list[str]:
    tmp_path = tmp_path / "in"
    tmp_path.mkdir()
    img = Image.new("RGB", (300, 200), "white")
    ImageDraw.Draw(img).text((10, 10), "Total 12.50", fill="black", font_size=20)
    img.save(tmp_path / "a.png")
    doc = pymupdf.open()
    for i in range(2):
        doc.new_page().insert_text((72, 72), f"page {i + 1} body text", fontsize=11)
    doc.save(tmp_path / "b.pdf")
    locked = pymupdf.open()
    locked.new_page().insert_text((72, 72), "secret", fontsize=11)
    locked.save(tmp_path / "c.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="pw")
    (tmp_path / "d.pdf").write_bytes(b"%PDF-1.7\n garbage")
    Image.new("RGB", (200, 200), "white").save(tmp_path / "e.png")
    return [str(tmp_path)]


SPEC = RunSpec(task=EXTRACT, prompt=EXTRACT.prompt, hd=4, max_new_tokens=6)


def _run(runner: Runner, paths: list[str], **kw: object) -> list:
    recs: list = []
    run_batch(runner, SPEC, paths, sink=recs.append, **kw)
    return recs


def test_every_render_mode_gives_the_same_records(runner: Runner, inputs: list[str]) -> None:
    def strip(recs: list) -> list:
        return [
            (r.source, r.page, r.status, r.text, r.flags, r.error and r.error.code) for r in recs
        ]

    inline = strip(_run(runner, inputs, prefetch=0))
    assert strip(_run(runner, inputs, prefetch=2, workers="thread")) == inline
    assert strip(_run(runner, inputs, prefetch=2, workers="process")) == inline
    by_source = {(Path(s).name, p): (st, code) for s, p, st, _, _, code in inline}
    assert by_source[("a.png", 1)] == ("ok", None)
    assert by_source[("b.pdf", 2)] == ("ok", None)
    assert by_source[("c.pdf", None)] == ("error", "password_required")
    assert by_source[("d.pdf", None)][0] == "error"
    blank = next(r for r in inline if Path(r[0]).name == "e.png")
    assert blank[4] == ("blank",) and blank[3] == ""


def test_resume_skips_done_pages_without_rendering_them(
    runner: Runner, inputs: list[str], tmp_path: Path
) -> None:
    from ixcdoc.records import JsonlWriter

    out = tmp_path / "out.jsonl"
    state = load_existing(out)
    with JsonlWriter(out) as w:
        first = run_batch(runner, SPEC, inputs, state=state, sink=w.write)
    assert first.ok == 4 and first.failed == 2
    state = load_existing(out)
    again = run_batch(runner, SPEC, inputs, state=state, sink=lambda r: pytest.fail("rerun wrote"))
    assert (again.ok, again.failed, again.skipped, again.skipped_failed) == (0, 0, 4, 2)
    other = RunSpec(task=EXTRACT, prompt="Another prompt", hd=4, max_new_tokens=2)
    third = run_batch(runner, other, inputs, state=load_existing(out))
    assert third.skipped == 0 and third.ok == 4  # a different prompt is a different job


def test_errors_survive_pickling() -> None:
    e = InputError("scans/a.pdf", "the PDF is encrypted", code="password_required", page=3)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is InputError and back.message == e.message
    assert (back.code, back.page, back.source) == ("password_required", 3, "scans/a.pdf")
    u = pickle.loads(pickle.dumps(UsageError("bad", code="usage")))
    assert isinstance(u, IxcdocError) and u.exit_code == 2 and str(u) == "bad"


def test_lower_tier_always_drops_crops() -> None:
    h, w = 1584, 1224
    tier = 25
    while (lower := lower_tier(h, w, tier, 336)) is not None:
        assert hd_geometry(h, w, lower).crops < hd_geometry(h, w, tier).crops
        tier = lower
    assert hd_geometry(h, w, tier).crops == 1


def test_stdin_bytes_run_in_every_mode(runner: Runner) -> None:
    img = Image.new("RGB", (120, 80), "white")
    ImageDraw.Draw(img).text((5, 5), "hi", fill="black", font_size=30)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    for kw in ({"prefetch": 0}, {"workers": "thread"}, {"workers": "process"}):
        recs = _run(runner, ["-"], stdin=io.BytesIO(buf.getvalue()), **kw)
        assert [(r.source, r.status) for r in recs] == [("-", "ok")]
