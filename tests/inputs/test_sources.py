"""open_sources: files, folders, globs, stdin, and every bad input as an ordered InputError."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import pymupdf
import pytest
from PIL import Image

from ixcdoc.errors import InputError, UsageError
from ixcdoc.inputs import (
    Document,
    ImageDocument,
    PdfDocument,
    open_document,
    open_sources,
    read_special_files,
    read_stdin,
    sources,
)
from tests.inputs.builders import add_text_page, png_bytes


def summary(items: list[Document | InputError]) -> list[tuple[str, str]]:
    """(source, format or error code) for each item; closes the documents."""
    out = []
    for item in items:
        if isinstance(item, InputError):
            out.append((item.source, item.code))
        else:
            out.append((item.source, item.format))
            item.close()
    return out


def pdf_bytes(n_pages: int = 1) -> bytes:
    doc = pymupdf.open()
    for i in range(n_pages):
        add_text_page(doc, [(12.0, f"page {i + 1}")])
    return doc.tobytes()


def png(color: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    return png_bytes(Image.new("RGB", (8, 6), color))


def test_files_in_argument_order_with_errors_interleaved(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "b.pdf").write_bytes(pdf_bytes(2))
    args = [str(tmp_path / "a.png"), str(tmp_path / "missing.pdf"), str(tmp_path / "b.pdf")]
    items = list(open_sources(args))
    assert summary(items) == [(args[0], "PNG"), (args[1], "not_found"), (args[2], "PDF")]
    assert "no such file" in str(items[1])


def test_document_attributes(tmp_path: Path) -> None:
    data = pdf_bytes(3)
    path = tmp_path / "doc.pdf"
    path.write_bytes(data)
    with open_document(path) as doc:
        assert isinstance(doc, PdfDocument)
        assert doc.source == str(path)
        assert doc.path == path
        assert (doc.kind, doc.format, doc.page_count) == ("pdf", "PDF", 3)
        assert doc.sha256 == hashlib.sha256(data).hexdigest()
        assert doc.note is None
        assert doc.pages("2-") == [2, 3]
    assert doc.closed
    with pytest.raises(ValueError, match="closed"):
        doc.page_info(1)


def test_page_numbers_outside_the_document(tmp_path: Path) -> None:
    (tmp_path / "one.png").write_bytes(png())
    with open_document(tmp_path / "one.png") as doc:
        for bad in (0, 2, -1):
            with pytest.raises(InputError) as info:
                doc.page_info(bad)
            assert info.value.code == "page_out_of_range"


def test_folder_is_recursive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    root = tmp_path / "scans"
    for rel, data in {
        "page10.png": png(),
        "page2.png": png(),
        "b/inner.pdf": pdf_bytes(),
        "a/x.png": png(),
        "notes.txt": b"just some notes\n",
        ".hidden.png": png(),
        ".git/config.png": png(),
        "a/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "c/photo.JPG": png(),  # lying extension, see the note
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    items = list(open_sources([str(root)]))
    notes = {i.source: i.note for i in items if isinstance(i, Document)}
    r = str(root)
    assert summary(items) == [
        (f"{r}/a/x.png", "PNG"),
        (f"{r}/b/inner.pdf", "PDF"),
        (f"{r}/c/photo.JPG", "PNG"),
        (f"{r}/notes.txt", "unsupported"),
        (f"{r}/page2.png", "PNG"),  # natural order: 2 before 10
        (f"{r}/page10.png", "PNG"),
    ]
    assert "content is PNG" in (notes[f"{r}/c/photo.JPG"] or "")


def test_folder_with_nothing_supported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("# hello\n")
    (tmp_path / "docs" / "data.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden.pdf").write_bytes(pdf_bytes())
    items = list(open_sources([str(tmp_path / "docs"), str(tmp_path / "empty")]))
    assert summary(items) == [
        (str(tmp_path / "docs" / "data.zip"), "unsupported"),
        (str(tmp_path / "docs" / "readme.md"), "unsupported"),
        (str(tmp_path / "docs"), "no_documents"),
        (str(tmp_path / "empty"), "no_documents"),
    ]
    assert "ZIP" in items[0].message  # type: ignore[union-attr]
    assert "2 other files" in items[2].message  # type: ignore[union-attr]
    assert "empty" in items[3].message  # type: ignore[union-attr]


def test_folder_symlink_loop_terminates(tmp_path: Path) -> None:
    root = tmp_path / "loop"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(png())
    try:
        (root / "sub" / "back").symlink_to(root, target_is_directory=True)
    except OSError:
        pytest.skip("no symlinks here")
    got = summary(list(open_sources([str(root)])))
    assert got == [(str(root / "sub" / "a.png"), "PNG")]


def test_glob_expanded_when_the_shell_did_not(tmp_path: Path) -> None:
    for name in ("s10.png", "s9.png", "s1.pdf", ".hidden.png"):
        (tmp_path / name).write_bytes(png() if name.endswith(".png") else pdf_bytes())
    got = summary(list(open_sources([str(tmp_path / "*.png"), str(tmp_path / "*.tif")])))
    assert got == [
        (str(tmp_path / "s9.png"), "PNG"),
        (str(tmp_path / "s10.png"), "PNG"),
        (str(tmp_path / "*.tif"), "not_found"),
    ]


def test_recursive_glob(tmp_path: Path) -> None:
    (tmp_path / "x" / "y").mkdir(parents=True)
    (tmp_path / "x" / "y" / "deep.png").write_bytes(png())
    (tmp_path / "top.png").write_bytes(png())
    got = summary(list(open_sources([str(tmp_path / "**" / "*.png")])))
    assert got == [(str(tmp_path / "top.png"), "PNG"), (str(tmp_path / "x/y/deep.png"), "PNG")]


def test_literal_name_with_glob_characters_is_not_expanded(tmp_path: Path) -> None:
    path = tmp_path / "scan[1].png"
    path.write_bytes(png())
    assert summary(list(open_sources([str(path)]))) == [(str(path), "PNG")]


@pytest.mark.parametrize(("data", "fmt"), [(png(), "PNG"), (pdf_bytes(2), "PDF")])
def test_stdin_is_sniffed(data: bytes, fmt: str) -> None:
    items = list(open_sources(["-"], stdin=io.BytesIO(data)))
    assert len(items) == 1
    doc = items[0]
    assert isinstance(doc, Document)
    with doc:
        assert (doc.source, doc.path, doc.format) == ("-", None, fmt)
        assert doc.sha256 == hashlib.sha256(data).hexdigest()
        assert doc.render(1).image.mode == "RGB"


def test_stdin_text_wrapper_uses_its_buffer() -> None:
    stream = io.TextIOWrapper(io.BytesIO(png()))
    items = list(open_sources(["-"], stdin=stream))  # type: ignore[arg-type]
    assert summary(items) == [("-", "PNG")]


def test_empty_stdin_and_stdin_twice() -> None:
    assert summary(list(open_sources(["-"], stdin=io.BytesIO(b"")))) == [("-", "empty")]
    with pytest.raises(UsageError):
        list(open_sources(["-", "-"], stdin=io.BytesIO(png())))


def test_bad_max_pixels_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        list(open_sources(["x.png"], max_pixels=0))


def test_named_pipe_is_read_once(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    data = png((1, 2, 3))

    def writer() -> None:
        with fifo.open("wb") as f:  # blocks until the reader opens it
            f.write(data)

    t = threading.Thread(target=writer)
    t.start()
    try:
        with open_document(fifo) as doc:
            assert doc.format == "PNG"
            assert doc.path is None
            assert doc.sha256 == hashlib.sha256(data).hexdigest()
    finally:
        t.join()


# --- bad inputs ------------------------------------------------------------------------------


def one_error(tmp_path: Path, name: str, data: bytes | None) -> InputError:
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    items = list(open_sources([str(path)]))
    assert len(items) == 1
    assert isinstance(items[0], InputError), items[0]
    assert items[0].source == str(path)
    return items[0]


def test_nonexistent(tmp_path: Path) -> None:
    assert one_error(tmp_path, "nope.pdf", None).code == "not_found"


def test_broken_symlink(tmp_path: Path) -> None:
    try:
        (tmp_path / "dangling.pdf").symlink_to(tmp_path / "gone.pdf")
    except OSError:
        pytest.skip("no symlinks here")
    e = one_error(tmp_path, "dangling.pdf", None)
    assert (e.code, e.problem) == ("not_found", "broken symbolic link")


def test_empty_file(tmp_path: Path) -> None:
    assert one_error(tmp_path, "empty.pdf", b"").code == "empty"


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.pdf"
    path.write_bytes(pdf_bytes())
    path.chmod(0)
    try:
        try:
            path.open("rb").close()
        except PermissionError:
            pass
        else:
            pytest.skip("running as root: chmod 000 does not stop reading")
        assert one_error(tmp_path, "secret.pdf", None).code == "unreadable"
    finally:
        path.chmod(0o644)


def test_unreadable_file_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same path as above, reachable as root: opening the file raises EACCES.
    path = tmp_path / "secret.pdf"
    path.write_bytes(pdf_bytes())
    real_open = Path.open

    def deny(self: Path, *args: object, **kwargs: object) -> object:
        if self.name == "secret.pdf":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", deny)
    e = one_error(tmp_path, "secret.pdf", None)
    assert (e.code, e.problem) == ("unreadable", "permission denied")


@pytest.mark.parametrize(
    ("name", "data", "code", "words"),
    [
        ("garbage.pdf", bytes(range(256)) * 4, "corrupt", "not PDF"),
        ("garbage.bin", b"\x13\x37" + bytes(range(200)), "unsupported", "binary"),
        ("notes.txt", b"hello, world\n", "unsupported", "text"),
        ("photo.heic", b"\x00\x00\x00\x18ftypheic" + b"\x00" * 20, "unsupported", "HEIC"),
        ("half.pdf", b"%PDF-1.7\n1 0 obj\n<<", "corrupt", "PDF"),
        ("tiny.png", b"\x89PNG", "corrupt", "not PNG"),
    ],
)
def test_bad_content(tmp_path: Path, name: str, data: bytes, code: str, words: str) -> None:
    e = one_error(tmp_path, name, data)
    assert e.code == code
    assert words in e.message


def test_lying_extension_png_named_pdf(tmp_path: Path) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(png((9, 8, 7)))
    with open_document(path) as doc:
        assert isinstance(doc, ImageDocument)
        assert doc.format == "PNG"
        assert doc.note == "content is PNG although the name ends in .pdf; opened as PNG"
        assert tuple(doc.render(1).image.getpixel((0, 0))) == (9, 8, 7)  # type: ignore[arg-type]


def test_lying_extension_pdf_named_png(tmp_path: Path) -> None:
    path = tmp_path / "page.png"
    path.write_bytes(pdf_bytes(2))
    with open_document(path) as doc:
        assert isinstance(doc, PdfDocument)
        assert doc.page_count == 2
        assert "content is PDF" in (doc.note or "")
        assert "page 2" in doc.page_text(2)


def test_unknown_extension_opened_by_content(tmp_path: Path) -> None:
    path = tmp_path / "download.dat"
    path.write_bytes(png())
    with open_document(path) as doc:
        assert doc.format == "PNG"
        assert ".dat" in (doc.note or "")


def test_folder_passed_to_open_document(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        open_document(tmp_path)
    assert info.value.code == "unsupported"


# --- PDFs that cannot be opened as they are ---------------------------------------------------


@pytest.fixture
def encrypted(tmp_path: Path) -> Path:
    doc = pymupdf.open()
    add_text_page(doc, [(12.0, "top secret figures")])
    path = tmp_path / "locked.pdf"
    doc.save(path, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="open", owner_pw="owner")
    return path


def test_encrypted_without_password(encrypted: Path) -> None:
    (e,) = list(open_sources([str(encrypted)]))
    assert isinstance(e, InputError)
    assert e.code == "password_required"
    assert e.message == f"{encrypted}: encrypted; pass --password"


def test_encrypted_with_wrong_password(encrypted: Path) -> None:
    (e,) = list(open_sources([str(encrypted)], password="guess"))
    assert isinstance(e, InputError)
    assert e.code == "bad_password"


def test_encrypted_with_password(encrypted: Path) -> None:
    with open_document(encrypted, password="open") as doc:
        assert "top secret figures" in doc.page_text(1)
        assert doc.render(1).image.size == (1224, 1584)


def test_password_on_plain_pdf_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "plain.pdf").write_bytes(pdf_bytes())
    with open_document(tmp_path / "plain.pdf", password="whatever") as doc:
        assert doc.page_count == 1


def test_truncated_pdf_beyond_repair(tmp_path: Path) -> None:
    e = one_error(tmp_path, "cut.pdf", pdf_bytes()[:60])
    assert e.code == "corrupt"


def test_damaged_pdf_repaired_by_mupdf_opens_with_a_note(tmp_path: Path) -> None:
    data = pdf_bytes(3)
    path = tmp_path / "damaged.pdf"
    path.write_bytes(data[: data.rfind(b"startxref")])  # no xref offset: MuPDF rebuilds it
    with open_document(path) as doc:
        assert doc.page_count == 3
        assert "repaired" in (doc.note or "")
        assert doc.render(3).image.size == (1224, 1584)


def test_pdf_without_pages(tmp_path: Path) -> None:
    data = (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )
    e = one_error(tmp_path, "nopages.pdf", data)
    assert e.code == "corrupt"
    assert "no pages" in e.message


def test_mupdf_does_not_print_to_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    data = pdf_bytes(2)
    path = tmp_path / "damaged.pdf"
    path.write_bytes(data[: data.rfind(b"startxref")])
    with open_document(path) as doc:
        doc.render(1)
    assert capfd.readouterr().err == ""


# --- pipes and devices are read once, bounded (issue 9, item 5) --------------------------------


@pytest.mark.skipif(not Path("/dev/fd").is_dir(), reason="no /dev/fd here")
def test_process_substitution_is_read_once_for_both_passes() -> None:
    data = pdf_bytes(2)
    r, w = os.pipe()
    os.write(w, data)  # a pipe buffer holds 64 KiB; the PDF is far smaller
    os.close(w)
    arg = f"/dev/fd/{r}"  # what bash's <(cat x.pdf) passes
    try:
        special = read_special_files([arg, arg])
    finally:
        os.close(r)
    assert list(special) == [arg]
    for _ in range(2):  # counting pages, then running them: the same bytes both times
        assert summary(list(open_sources([arg], special=special))) == [(arg, "PDF")]
    (doc,) = open_sources([arg], special=special)
    with doc:
        assert isinstance(doc, Document) and doc.page_count == 2
        assert doc.sha256 == hashlib.sha256(data).hexdigest()


def test_named_pipe_passed_twice_does_not_wait_for_a_second_writer(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    data = png((4, 5, 6))

    def writer() -> None:
        with fifo.open("wb") as f:  # one writer, once: a second open would block forever
            f.write(data)

    t = threading.Thread(target=writer)
    t.start()
    try:
        special = read_special_files([str(fifo)])
    finally:
        t.join()
    assert special == {str(fifo): data}
    assert summary(list(open_sources([str(fifo)], special=special))) == [(str(fifo), "PNG")]
    assert summary(list(open_sources([str(fifo)], special=special))) == [(str(fifo), "PNG")]


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero here")
def test_an_endless_device_is_refused_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    got = read_special_files(["/dev/zero"], limit=3 << 20)["/dev/zero"]
    assert isinstance(got, InputError) and got.code == "too_large"
    assert str(got).startswith("/dev/zero: more than 3 MiB through a pipe or device")
    monkeypatch.setattr(sources, "MAX_STREAM_BYTES", 1 << 20)  # without a read_special_files
    assert summary(list(open_sources(["/dev/zero"]))) == [("/dev/zero", "too_large")]


def test_stdin_is_bounded_too() -> None:
    got = read_stdin(io.BytesIO(b"x" * 100), limit=99)
    assert isinstance(got, InputError) and got.code == "too_large" and got.source == "-"
    assert read_stdin(io.BytesIO(b"x" * 99), limit=99) == b"x" * 99


def test_a_pipe_found_in_a_folder_is_reported_not_read(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    (tmp_path / "a.png").write_bytes(png())
    os.mkfifo(tmp_path / "b.pdf")  # no writer: opening it for reading would block forever
    found = summary(list(open_sources([str(tmp_path)])))
    assert found == [(str(tmp_path / "a.png"), "PNG"), (str(tmp_path / "b.pdf"), "unsupported")]


# --- notes become flags on every page (issue 9, item 9) ----------------------------------------


def _gif(frames: int) -> bytes:
    ims = [Image.new("RGB", (8, 6), (10 * i, 0, 0)) for i in range(frames)]
    buf = io.BytesIO()
    ims[0].save(buf, "GIF", save_all=True, append_images=ims[1:], duration=100)
    return buf.getvalue()


def _damaged_pdf() -> bytes:
    data = pdf_bytes(2)
    return data[: data.rfind(b"startxref")]  # no xref offset: MuPDF rebuilds it


@pytest.mark.parametrize(
    ("name", "data", "notes", "flags"),
    [
        ("clean.png", png(), [], ()),
        (
            "scan.pdf",
            png(),
            ["content is PNG although the name ends in .pdf; opened as PNG"],
            ("type_mismatch",),
        ),
        (
            "download.dat",
            png(),
            ["opened as PNG by its content (.dat is not a document extension)"],
            (),
        ),
        (
            "moving.gif",
            _gif(3),
            ["GIF with 3 frames: only the first frame is read"],
            ("frames_dropped",),
        ),
        (
            "damaged.pdf",
            _damaged_pdf(),
            ["damaged file, repaired by MuPDF: some pages may be incomplete"],
            ("repaired",),
        ),
        (
            "damaged.png",
            _damaged_pdf(),
            [
                "content is PDF although the name ends in .png; opened as PDF",
                "damaged file, repaired by MuPDF: some pages may be incomplete",
            ],
            ("type_mismatch", "repaired"),
        ),
    ],
)
def test_notes_and_the_flags_they_put_on_pages(
    tmp_path: Path, name: str, data: bytes, notes: list[str], flags: tuple[str, ...]
) -> None:
    from ixcdoc.records import FLAGS

    path = tmp_path / name
    path.write_bytes(data)
    with open_document(path) as doc:
        assert doc.notes == notes
        assert doc.note == ("; ".join(notes) or None)
        assert doc.flags == flags
        assert all(doc.page_flags(p) == flags for p in range(1, doc.page_count + 1))
    assert set(flags) <= set(FLAGS)  # a record can carry them


@pytest.mark.skipif(not Path("/dev/fd").is_dir(), reason="no /dev/fd here")
def test_sources_read_holds_a_pipe_for_every_pass() -> None:
    from ixcdoc.inputs import Sources

    data = pdf_bytes(3)
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    arg = f"/dev/fd/{r}"
    try:
        sources = Sources.read([arg], pages="2-3")
    finally:
        os.close(r)  # nothing can read the pipe again: both passes use the bytes held
    for _ in range(2):  # plan/count, then run
        got = [(doc.source, doc.format, pages) for doc, pages in sources.documents()]  # type: ignore[misc]
        assert got == [(arg, "PDF", [2, 3])]
