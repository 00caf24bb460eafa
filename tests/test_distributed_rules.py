"""The rules of ``extract --ray`` that need no Ray instance: the address forms, joining an address
where nothing answers, Ray Client refused, and the render task reading a page exactly as one
machine does (its flags). Fast: Ray is never started here (tests/test_distributed.py does)."""

from __future__ import annotations

import dataclasses
import pickle
import socket
import subprocess
from pathlib import Path

import pymupdf
import pytest

from ixcdoc.distributed.cluster import check_address, parse_address, reach
from ixcdoc.distributed.workers import render_row
from ixcdoc.errors import IxcdocError, UsageError
from ixcdoc.inputs import Sources, file_sha256
from ixcdoc.reading import PageItem, read_pages
from tests.cli.helpers import IXCDOC, subprocess_env, text_png
from tests.inputs.builders import add_text_page

WAIT_S = 120  # bound on a child run; before the fix, an unreachable address hung for ever


def closed_port() -> int:
    """A local TCP port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("text", "host", "port", "client"),
    [
        ("auto", None, None, False),
        ("10.0.0.1:6379", "10.0.0.1", 6379, False),
        ("ray://head.example:10001", "head.example", 10001, True),
        ("ray://[fe80::1]:10001", "fe80::1", 10001, True),
    ],
)
def test_address_forms(text: str, host: str | None, port: int | None, client: bool) -> None:
    a = parse_address(text)
    assert (a.host, a.port, a.client) == (host, port, client)


@pytest.mark.parametrize(
    "text", ["head", "ray://head", "head:0", "head:70000", "http://head:6379", "", "head:63 79"]
)
def test_malformed_addresses_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match=r"use auto \(the cluster on this machine\) or HOST:PORT"):
        parse_address(text)


def test_ray_client_is_refused_with_what_to_do_instead() -> None:
    """Ray Data needs its driver on the cluster: through Ray Client (ray://) Ray 2.60 connects,
    then fails inside Ray Data. One usage line that says what works instead."""
    with pytest.raises(UsageError, match=r"does not run through Ray Client.*--ray-address auto"):
        check_address("ray://head:10001")
    assert check_address("head:6379").port == 6379


def test_an_address_where_nothing_listens_fails_at_once(loopback: None) -> None:
    port = closed_port()
    with pytest.raises(IxcdocError, match=f"nothing answers at 127.0.0.1:{port}") as info:
        reach(parse_address(f"127.0.0.1:{port}"), timeout=5)
    assert info.value.code == "ray_unreachable"


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*IXCDOC, *args],
        cwd=cwd,
        capture_output=True,
        env={**subprocess_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=WAIT_S,
    )


@pytest.mark.parametrize(
    ("address", "code", "says"),
    [
        ("ray://", 2, "use auto"),
        ("head", 2, "use auto"),
        ("ray://127.0.0.1:{port}", 2, "does not run through Ray Client"),
        ("127.0.0.1:{port}", 1, "nothing answers at 127.0.0.1:{port}"),
    ],
)
def test_the_cli_says_what_is_wrong_with_an_address_in_one_line(
    tmp_path: Path, address: str, code: int, says: str
) -> None:
    page = text_png(tmp_path / "a.png", "alpha")
    port = closed_port()
    address, says = address.format(port=port), says.format(port=port)
    done = _cli(["extract", str(page), "--ray-address", address, "-o", "out.jsonl"], tmp_path)
    err = done.stderr.decode()
    assert done.returncode == code, err
    assert err.startswith("error: ") and says in err and len(err.splitlines()) == 1


def _damaged_pdf(path: Path) -> Path:
    doc = pymupdf.open()
    doc.new_page(width=200, height=150).insert_text((10, 40), "page one words")
    data = doc.tobytes()
    path.write_bytes(data[: data.rfind(b"startxref")])  # no xref offset: MuPDF rebuilds it
    return path


def _tiny_text_pdf(path: Path) -> Path:
    """4-pt text on a 1440-pt page: under a 100,000-pixel cap it is flagged low_dpi."""
    doc = pymupdf.open()
    add_text_page(
        doc, [(4.0, "The quick brown fox jumps over the lazy dog")] * 20, size=(1440, 1440)
    )
    doc.save(path)
    return path


def test_the_render_task_reads_a_page_as_one_machine_does(tmp_path: Path) -> None:
    """Ray records carry the flags one machine writes: the render task reads each page with
    the reader of ``read_pages``, so its PageItem is the same, flags included."""
    folder = tmp_path / "docs"
    folder.mkdir()
    _damaged_pdf(folder / "damaged.pdf")
    text_png(folder / "shot.png", "PNG bytes").rename(folder / "png-named.pdf")
    _tiny_text_pdf(folder / "tiny-text.pdf")
    limit = 100_000
    local = [
        it
        for it in read_pages(Sources([str(folder)], max_pixels=limit))
        if isinstance(it, PageItem)
    ]
    assert sorted(f for it in local for f in it.flags) == ["low_dpi", "repaired", "type_mismatch"]
    for it in local:
        row = {
            "source": it.source,
            "path": it.source,
            "sha256": file_sha256(it.source),
            "page": it.page,
            "page_count": it.page_count,
        }
        remote = pickle.loads(render_row(row, None, limit)["item"])
        assert remote.flags == it.flags and remote.blank == it.blank and remote.error is None
        assert dataclasses.astuple(remote.rendered.info) == dataclasses.astuple(it.rendered.info)
