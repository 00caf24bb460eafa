"""The batch run as a library call, with a tiny real model: reading ahead or not gives the
same records, resume from Python, errors pickle, the tier ladder."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pymupdf
import pytest
from PIL import Image, ImageDraw

from ixcdoc.batch import BatchStats, Events, run
from ixcdoc.errors import InputError, IxcdocError, UsageError
from ixcdoc.feeder import shm_prefix
from ixcdoc.inputs import Sources
from ixcdoc.pagerun import Job
from ixcdoc.planning import lower_tier
from ixcdoc.records import PageRecord, latest_records
from ixcdoc.runtime import DocModel, load
from ixcdoc.tasks import EXTRACT
from ixcdoc.tiling import hd_geometry
from ixcdoc.tinyckpt import write_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def model(ckpt: Path) -> DocModel:
    return load(ckpt, device="cpu")


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


JOB = Job(EXTRACT, EXTRACT.prompt, hd=4, max_new_tokens=6)


class Collect(Events):
    """Keeps every record and skip the run reports."""

    def __init__(self) -> None:
        self.records: list[PageRecord] = []
        self.skips = 0

    def record(self, item: object, rec: PageRecord) -> None:
        self.records.append(rec)

    def skipped(self, item: object) -> None:
        self.skips += 1


def _run(model: DocModel | Path, paths: list[str], **kw: object) -> list[PageRecord]:
    events = Collect()
    stdin = kw.pop("stdin", None)
    sources = Sources.read(paths, stdin=stdin)  # type: ignore[arg-type]
    run(JOB, sources, model=model, device="cpu", events=events, **kw)  # type: ignore[arg-type]
    return events.records


def test_reading_ahead_or_not_gives_the_same_records(model: DocModel, inputs: list[str]) -> None:
    def strip(recs: list[PageRecord]) -> list:
        return [
            (r.source, r.page, r.status, r.text, r.flags, r.error and r.error.code) for r in recs
        ]

    inline = strip(_run(model, inputs, read_ahead=0))
    assert strip(_run(model, inputs, read_ahead=2)) == inline
    by_source = {(Path(s).name, p): (st, code) for s, p, st, _, _, code in inline}
    assert by_source[("a.png", 1)] == ("ok", None)
    assert by_source[("b.pdf", 2)] == ("ok", None)
    assert by_source[("c.pdf", None)] == ("error", "password_required")
    assert by_source[("d.pdf", None)][0] == "error"
    blank = next(r for r in inline if Path(r[0]).name == "e.png")
    assert blank[4] == ("blank",) and blank[3] == ""


def test_resume_from_python_skips_done_pages_without_rendering_them(
    ckpt: Path, inputs: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    first = run(JOB, Sources(inputs), model=ckpt, device="cpu", output=out)
    assert (first.ok, first.failed, first.loaded) == (4, 2, True)
    again = run(JOB, Sources(inputs), model=ckpt, device="cpu", output=out)
    assert (again.ok, again.failed, again.skipped, again.skipped_failed) == (0, 0, 4, 2)
    assert not again.loaded  # every page was done: the model is never loaded
    assert len(out.read_text().splitlines()) == 6
    other = Job(EXTRACT, "Another prompt", hd=4, max_new_tokens=2)
    third = run(other, Sources(inputs), model=ckpt, device="cpu", output=out)
    assert third.skipped == 0 and third.ok == 4  # a different prompt is a different job
    redo = run(JOB, Sources(inputs), model=ckpt, device="cpu", output=out, redo_failed=True)
    assert (redo.ok, redo.failed, redo.skipped) == (0, 2, 4)
    latest = latest_records(out)
    assert len(latest) == 12  # 4 pages and 2 unreadable files, for each of the two prompts


def test_a_run_whose_inputs_all_fail_loads_no_model(tmp_path: Path) -> None:
    missing = tmp_path / "absent" / "model"  # loading it would fail loudly
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.7 broken")
    events = Collect()
    stats = run(
        JOB,
        Sources([str(tmp_path / "bad.pdf"), str(tmp_path / "nope.png")]),
        model=missing,
        device="cpu",
        events=events,
    )
    assert isinstance(stats, BatchStats) and not stats.loaded
    assert [r.status for r in events.records] == ["error", "error"]
    assert [r.error.code for r in events.records if r.error][1] == "not_found"


def test_the_output_file_inside_a_folder_being_read_is_not_read(
    model: DocModel, inputs: list[str]
) -> None:
    out = Path(inputs[0]) / "out.jsonl"
    first = run(
        JOB, Sources(inputs, exclude=frozenset({str(out.resolve())})), model=model, output=out
    )
    again = run(JOB, Sources.read(inputs, exclude=[out]), model=model, output=out)
    assert (first.ok, first.failed) == (4, 2)
    assert (again.ok, again.failed, again.skipped, again.skipped_failed) == (0, 0, 4, 2)


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


def test_stdin_bytes_run_with_and_without_reading_ahead(model: DocModel) -> None:
    img = Image.new("RGB", (120, 80), "white")
    ImageDraw.Draw(img).text((5, 5), "hi", fill="black", font_size=30)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    for ahead in (0, 2):
        recs = _run(model, ["-"], stdin=io.BytesIO(buf.getvalue()), read_ahead=ahead)
        assert [(r.source, r.status) for r in recs] == [("-", "ok")]


def test_the_output_is_locked_before_its_state_is_read_or_a_model_loaded(
    ckpt: Path, inputs: list[str], tmp_path: Path
) -> None:
    """Issue 9.2: a run that read the resume state before taking the lock could write pages
    another run finished meanwhile. The lock comes first, so the second run stops at once."""
    from contextlib import nullcontext

    from ixcdoc.records import RecordsError, open_output

    out = tmp_path / "race.jsonl"
    holder, _ = open_output(out)
    loads: list[str] = []

    class Spy(Events):
        def loading(self, model: str):  # type: ignore[no-untyped-def]
            loads.append(model)
            return nullcontext()

    try:
        with pytest.raises(RecordsError) as e:
            run(JOB, Sources(inputs), model=ckpt, device="cpu", output=out, events=Spy())
        assert e.value.code == "output_locked" and loads == []
    finally:
        holder.close()
    stats = run(JOB, Sources(inputs), model=ckpt, device="cpu", output=out, events=Spy())
    assert stats.ok == 4 and len(loads) == 1


def _records(out: Path) -> list[tuple]:
    from ixcdoc.records import latest_records

    return sorted(
        (Path(r.source).name, r.page, r.status, r.text, r.tier, r.flags)
        for r in latest_records(out)
    )


def test_the_engine_gives_the_records_of_one_page_at_a_time(
    model: DocModel, inputs: list[str], tmp_path: Path
) -> None:
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    a = run(JOB, Sources(inputs), model=model, output=one, batch_size=1)
    b = run(JOB, Sources(inputs), model=model, output=many, batch_size=3)
    assert (a.batch_size, b.batch_size) == (1, 3)
    assert _records(one) == _records(many)
    assert (b.ok, b.failed) == (4, 2)


def test_with_the_engine_stdout_keeps_input_order(model: DocModel, tmp_path: Path) -> None:
    """Pages finish out of order (an unreadable file's record is ready at once); the records
    file gets them as they finish, stdout and the display in input order."""
    import io as _io

    text_img = tmp_path / "a.png"
    img = Image.new("RGB", (300, 200), "white")
    ImageDraw.Draw(img).text((10, 10), "Total 12.50", fill="black", font_size=20)
    img.save(text_img)
    bad = tmp_path / "b.pdf"
    bad.write_bytes(b"%PDF-1.7\n garbage")
    out, stream = tmp_path / "out.jsonl", _io.StringIO()
    events = Collect()
    run(
        JOB,
        Sources([str(text_img), str(bad)]),
        model=model,
        output=out,
        json_stream=stream,
        events=events,
        batch_size=4,
    )
    in_file = [json.loads(line)["source"] for line in out.read_text().splitlines()]
    on_stdout = [json.loads(line)["source"] for line in stream.getvalue().splitlines()]
    assert in_file == [str(bad), str(text_img)]  # finishing order
    assert on_stdout == [str(text_img), str(bad)]  # input order
    assert [r.source for r in events.records] == on_stdout


def test_a_page_out_of_gpu_memory_is_retried_lower_without_disturbing_the_others(
    model: DocModel, inputs: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's fault hook raises CUDA OOM in the prefill of a.png at its first tier."""
    import torch

    real = DocModel.engine
    hit: list[int] = []

    def fault(request) -> None:  # type: ignore[no-untyped-def]
        if request.images[0].size == (300, 200) and not hit:
            hit.append(request.hd)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    def engine(self, **kw):  # type: ignore[no-untyped-def]
        return real(self, fault_hook=fault, **kw)

    monkeypatch.setattr(DocModel, "engine", engine)
    auto = Job(EXTRACT, EXTRACT.prompt, max_new_tokens=4)  # tier per page, so lower exists
    out = tmp_path / "out.jsonl"
    stats = run(auto, Sources(inputs), model=model, output=out, batch_size=3)
    recs = {(Path(r.source).name, r.page): r for r in latest_records(out)}
    a = recs[("a.png", 1)]
    assert hit and a.status == "ok" and "tier_fallback" in a.flags and a.tier < hit[0]
    assert lower_tier(200, 300, hit[0], model.tile) == a.tier
    others = [r for k, r in recs.items() if k != ("a.png", 1) and r.status == "ok"]
    assert others and all("tier_fallback" not in r.flags for r in others)
    assert (stats.ok, stats.failed) == (4, 2)


def test_beams_are_their_own_job_and_match_the_engine_beam_search(
    model: DocModel, tmp_path: Path
) -> None:
    """--beams 2: records carry num_beams, resume keys tell greedy and beams apart, and the
    text equals DocModel.chat_batch with num_beams=2 (beam search itself: tests/engine)."""
    from ixcdoc.engine import ChatRequest

    img = Image.new("RGB", (300, 200), "white")
    ImageDraw.Draw(img).text((10, 10), "Total 12.50", fill="black", font_size=20)
    page = tmp_path / "a.png"
    img.save(page)
    out = tmp_path / "out.jsonl"
    greedy = run(JOB, Sources([str(page)]), model=model, output=out, batch_size=1)
    beams = Job(EXTRACT, EXTRACT.prompt, hd=4, max_new_tokens=6, num_beams=2)
    first = run(beams, Sources([str(page)]), model=model, output=out, batch_size=1)
    again = run(beams, Sources([str(page)]), model=model, output=out)
    assert (greedy.ok, first.ok, first.skipped, again.skipped) == (1, 1, 0, 1)
    recs = latest_records(out)
    assert [r.num_beams for r in recs] == [None, 2]
    (want,) = model.chat_batch(
        [ChatRequest([img], EXTRACT.prompt, hd=4, max_new_tokens=6, num_beams=2)]
    )
    assert recs[1].text == want.text.strip()


def test_the_feeder_processes_give_the_records_of_the_reader_thread(
    model: DocModel, inputs: list[str], tmp_path: Path
) -> None:
    """--workers 2: pages rendered in feeder processes. Images keep upstream's pixels, so their
    text is identical; PDFs are rendered straight at their tier (sharper, other pixels), so
    for them the status, tier, grid and flags must agree. The feeder leaves nothing in
    /dev/shm (only this process's segments are looked at: other processes use it too)."""
    shm = Path("/dev/shm")

    def ours() -> set[str]:
        return {p.name for p in shm.iterdir() if p.name.startswith(shm_prefix())}

    before = ours() if shm.is_dir() else set()
    one, fed = tmp_path / "one.jsonl", tmp_path / "fed.jsonl"
    a = run(JOB, Sources(inputs), model=model, output=one, batch_size=3)
    b = run(JOB, Sources(inputs), model=model, output=fed, batch_size=3, workers=2)
    assert (a.ok, a.failed, a.blank) == (b.ok, b.failed, b.blank) == (4, 2, 1)

    def view(out: Path) -> dict:
        return {
            (Path(r.source).name, r.page): (
                r.status,
                r.tier,
                r.grid,
                r.flags,
                r.error and r.error.code,
            )
            for r in latest_records(out)
        }

    assert view(one) == view(fed)
    texts = {
        path: {
            Path(r.source).name: r.text for r in latest_records(path) if r.source.endswith(".png")
        }
        for path in (one, fed)
    }
    assert texts[one] == texts[fed] and texts[one]
    if shm.is_dir():
        assert ours() - before == set()
