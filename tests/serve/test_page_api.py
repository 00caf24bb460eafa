"""The web page's API over raw HTTP: uploads, plans, runs through the server's backend, records.

The browser itself is driven in tests/web; here every answer is checked against the CLI (the
same command run with the same tiny checkpoint) or against what the run itself reported.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from ixcdoc.cli import app as cli_app
from ixcdoc.engine.request import ChatRequest
from ixcdoc.records import validate_line
from ixcdoc.serve import create_app
from ixcdoc.serve.served import RunControl, ServedModel
from ixcdoc.serve.uploads import Upload, UploadStore, upload_name
from ixcdoc.tasks import CHART_TABLE, EXTRACT, SCREEN_PROMPT
from tests.serve.helpers import TIMEOUT, ProbeEngineBackend, chat_body, live_server

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
KEY = "sk-page"
AUTH = {"Authorization": f"Bearer {KEY}"}
DOCS = "/v1/ixcdoc/documents"
MAX_TOKENS = 8  # the server's --max-tokens: every page run generates at most this many
QUESTION = "Which setting has the best InfoVQA accuracy in Table 1?"
VARYING = {"created_at", "timings"}  # what two runs of the same page never share


@pytest.fixture(scope="module")
def probe(tiny: Any) -> ProbeEngineBackend:
    """The server's engine backend, with probes: it keeps every answer by its prompt."""
    return ProbeEngineBackend(tiny, n_slots=2, max_len=1024, max_queue=8)


@pytest.fixture(scope="module")
def server(tiny: Any, probe: ProbeEngineBackend) -> Iterator[str]:
    app = create_app(tiny, backend=probe, api_key=KEY, max_tokens=MAX_TOKENS, max_body_mb=1.0)
    with live_server(app) as url:
        yield url


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=TIMEOUT, headers=AUTH) as c:
        yield c


def upload(http: httpx.Client, path: Path, name: str | None = None) -> dict[str, Any]:
    r = http.post(DOCS, params={"name": name or path.name}, content=path.read_bytes())
    assert r.status_code == 200, r.text
    return r.json()


def run(http: httpx.Client, doc_id: str, **body: Any) -> list[dict[str, Any]]:
    with http.stream("POST", f"{DOCS}/{doc_id}/runs", json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line.strip()]


def records(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["record"] for e in events if e["event"] == "record"]


def cli_records(tiny_paths: dict[str, Path], *args: str) -> list[dict[str, Any]]:
    """What the CLI prints with --json for the same page, model and generation length."""
    model = ["--model", str(tiny_paths["normal"]), "--device", "cpu"]
    model += ["--max-new-tokens", str(MAX_TOKENS), "--json"]
    result = CliRunner().invoke(cli_app, [*args, *model], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def same(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two records of one page: the same fields, the same values but time and timings. Screening
    scores (ask on a scan) agree to 1e-4: the server scores each page as a job of its own, the
    CLI all pages in one batch, and batches may differ in the last float bits (the engine's
    parity tests allow 1e-4 on logits)."""
    assert set(a) == set(b)
    skip = VARYING | {"screening"}
    assert {k: v for k, v in a.items() if k not in skip} == {
        k: v for k, v in b.items() if k not in skip
    }
    assert set(a["timings"]) == set(b["timings"])
    if "screening" in a:
        mine, theirs = a["screening"], b["screening"]
        assert (mine["tier"], mine["chosen"]) == (theirs["tier"], theirs["chosen"])
        assert mine["scores"].keys() == theirs["scores"].keys()
        for page, score in mine["scores"].items():
            assert score == pytest.approx(theirs["scores"][page], abs=1e-4)


# ---- the page and its assets -----------------------------------------------------------------


def test_the_page_needs_no_key_and_names_nothing_outside_the_server(server: str) -> None:
    with httpx.Client(base_url=server, timeout=TIMEOUT) as bare:
        page = bare.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        refs = re.findall(r'(?:src|href)="([^"]*)"', page.text)
        assert refs and all(r.startswith("/web/") or r.startswith("data:") for r in refs)
        for ref in refs:
            if ref.startswith("/web/"):
                asset = bare.get(ref)
                assert asset.status_code == 200, ref
                # No URL but the SVG namespace: nothing is fetched from elsewhere (no CDN).
                urls = set(re.findall(r"https?://[^\s\"'`)]+", asset.text))
                assert urls <= {"http://www.w3.org/2000/svg"}, (ref, urls)
        assert bare.get("/web/nope.js").status_code == 404
        # The page's API is /v1: it needs the key as every API route does.
        r = bare.get(f"{DOCS}/x")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = bare.get(f"{DOCS}/x", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["message"] == "incorrect API key"


# ---- uploads -----------------------------------------------------------------------------------


def test_an_upload_is_read_as_the_cli_reads_it(http: httpx.Client, tmp_path: Path) -> None:
    pdf = SAMPLES / "paper.pdf"
    info = upload(http, pdf, name="../../etc/paper.pdf")
    assert info["name"] == "paper.pdf"  # the last part of whatever name the browser sends
    assert (info["page_count"], info["kind"]) == (2, "PDF")
    assert info["content_sha256"] == hashlib.sha256(pdf.read_bytes()).hexdigest()
    assert http.get(f"{DOCS}/{info['id']}").json() == info

    notes = tmp_path / "notes.txt"
    notes.write_text("just text, no document")
    r = http.post(DOCS, params={"name": "notes.pdf"}, content=notes.read_bytes())
    err = r.json()["error"]
    assert (r.status_code, err["code"]) == (400, "unsupported")
    assert err["message"].startswith("notes.pdf: not a supported document (looks like text)")
    r = http.post(DOCS, params={"name": "empty.png"}, content=b"")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "empty")
    r = http.post(DOCS, params={"name": "big.pdf"}, content=b"%PDF" + b"0" * 2**20)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "too_large")
    r = http.get(f"{DOCS}/no-such-id/plan")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "document_not_found")

    assert http.delete(f"{DOCS}/{info['id']}").json() == {"id": info["id"], "deleted": True}
    assert http.get(f"{DOCS}/{info['id']}").status_code == 404


def locked_pdf(folder: Path, password: str) -> Path:
    """samples/paper.pdf saved encrypted (AES-256) with a user password."""
    import pymupdf

    path = folder / "locked.pdf"
    with pymupdf.open(SAMPLES / "paper.pdf") as doc:
        doc.save(path, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw=password, owner_pw="o")
    return path


def test_an_encrypted_pdf_opens_with_its_password_in_a_header(
    http: httpx.Client, tmp_path: Path, tiny_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pdf = locked_pdf(tmp_path, "s3cret")
    post = {"params": {"name": "locked.pdf"}, "content": pdf.read_bytes()}
    r = http.post(DOCS, **post)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "password_required")
    r = http.post(DOCS, **post, headers={"X-Ixcdoc-Password": "wrong"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_password")
    r = http.post(DOCS, **post, headers={"X-Ixcdoc-Password": "s3cret"})
    assert r.status_code == 200 and r.json()["page_count"] == 2
    doc = r.json()
    assert http.get(f"{DOCS}/{doc['id']}/pages/1.jpg", params={"max": 100}).status_code == 200
    (rec,) = records(run(http, doc["id"], task="extract", pages="1"))
    monkeypatch.chdir(tmp_path)
    (want,) = cli_records(
        tiny_paths, "extract", "locked.pdf", "--pages", "1", "--password", "s3cret"
    )
    same(rec, want)


def test_page_images_are_jpegs_at_most_the_side_asked(http: httpx.Client) -> None:
    doc = upload(http, SAMPLES / "paper.pdf")
    r = http.get(f"{DOCS}/{doc['id']}/pages/2.jpg", params={"max": 200})
    assert r.headers["content-type"] == "image/jpeg"
    from io import BytesIO

    im = Image.open(BytesIO(r.content))
    assert max(im.size) == 200 and im.format == "JPEG"
    r = http.get(f"{DOCS}/{doc['id']}/pages/3.jpg")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "page_out_of_range")


def test_the_store_keeps_the_latest_uploads() -> None:
    store = UploadStore(max_uploads=2)
    made = [Upload(str(i), f"{i}.png", b"x", 1, "PNG", "0" * 64, (), None) for i in range(3)]
    for up in made[:2]:
        store.add(up)
    assert store.get("0") is made[0]  # used: now the newest
    store.add(made[2])
    assert store.get("1") is None and store.get("0") is made[0] and store.get("2") is made[2]
    assert [upload_name(n) for n in ("", "-", "a\x00b.pdf", "C:\\x\\y.png")] == [
        "upload",
        "upload",
        "ab.pdf",
        "y.png",
    ]


# ---- runs ----------------------------------------------------------------------------------------


def test_plan_rows_are_the_tiers_the_model_reads_at(http: httpx.Client) -> None:
    doc = upload(http, SAMPLES / "paper.pdf")
    plan = http.get(f"{DOCS}/{doc['id']}/plan", params={"task": "extract"}).json()
    assert [r["page"] for r in plan["rows"]] == [1, 2]
    got = records(run(http, doc["id"], task="extract"))
    assert [r["page"] for r in got] == [1, 2]
    for row, rec in zip(plan["rows"], got, strict=True):
        assert rec["status"] == "ok"
        assert (rec["tier"], rec["grid"], rec["image_tokens"]) == (
            row["tier"],
            row["grid"],
            row["image_tokens"],
        )
        assert rec["native_size"] == row["native_size"]
        top, bottom, left, right = row["pad"]
        assert row["padded_size"] == [
            row["resized_size"][0] + top + bottom,
            row["resized_size"][1] + left + right,
        ]
    forced = http.get(f"{DOCS}/{doc['id']}/plan", params={"task": "extract", "hd": "4"}).json()
    assert {r["tier"] for r in forced["rows"]} == {4} and forced["hd"] == "4"
    ask = http.get(f"{DOCS}/{doc['id']}/plan", params={"task": "ask"}).json()
    assert all(r["task"] == "ask" for r in ask["rows"])
    r = http.get(f"{DOCS}/{doc['id']}/plan", params={"task": "poem"})
    assert r.status_code == 400 and "unknown task 'poem'" in r.json()["error"]["message"]


def test_a_transcription_streams_and_is_extracts_record(
    http: httpx.Client,
    probe: ProbeEngineBackend,
    tiny_paths: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = upload(http, SAMPLES / "paper.pdf")
    events = run(http, doc["id"], task="extract", pages="2")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "opened" and kinds[-1] == "done"
    assert kinds.index("started") < kinds.index("text") < kinds.index("record")
    (rec,) = records(events)
    streamed = "".join(e["delta"] for e in events if e["event"] == "text")
    assert streamed.strip() == rec["text"]
    assert events[-1] == {"event": "done", "ok": 1, "failed": 0, "blank": 0, "pages": 1}
    last = [e for e in events if e["event"] == "progress"][-1]
    assert (last["tokens"], last["done"], last["total"]) == (rec["timings"]["tokens"], 1, 1)
    t = rec["timings"]  # the finished pages' counts, as their records say
    assert (last["finished_tokens"], last["draft_tokens"], last["accepted_tokens"]) == (
        t["tokens"],
        t["draft_tokens"],
        t["accepted_tokens"],
    )
    assert t["draft_tokens"] > 0  # the page's text layer was its draft
    # It went through the server's backend: the engine answered the extract prompt.
    assert probe.answers[EXTRACT.prompt].text.strip() == rec["text"]
    monkeypatch.chdir(SAMPLES)  # so that the CLI names the file as the browser did
    (want,) = cli_records(tiny_paths, "extract", "paper.pdf", "--pages", "2")
    same(rec, want)


def test_ask_answers_from_the_page_ask_chooses(
    http: httpx.Client, tiny_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = upload(http, SAMPLES / "paper.pdf")
    events = run(http, doc["id"], task="ask", question=QUESTION)
    assert [e["pages"] for e in events if e["event"] == "opened"] == [1]
    (rec,) = records(events)
    assert [e["page"] for e in events if e["event"] == "started"] == [rec["page"]] == [2]
    monkeypatch.chdir(SAMPLES)
    (want,) = cli_records(tiny_paths, "ask", "paper.pdf", QUESTION)
    same(rec, want)
    r = http.post(f"{DOCS}/{doc['id']}/runs", json={"task": "ask", "question": "  "})
    assert r.status_code == 400 and r.json()["error"]["message"] == "no question given"


def cli_ask(ckpt: Path, *args: str) -> tuple[dict[str, Any], str]:
    """``ixcdoc ask ... --json``'s one record and its stderr."""
    model = ["--model", str(ckpt), "--device", "cpu", "--max-new-tokens", str(MAX_TOKENS)]
    result = CliRunner().invoke(cli_app, ["ask", *args, "--json", *model], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    (rec,) = [json.loads(line) for line in result.stdout.splitlines()]
    return rec, result.stderr


@pytest.mark.parametrize("slots", ["engine", "one at a time"])
def test_ask_on_a_scan_screens_its_pages_on_the_servers_queue(
    http: httpx.Client,
    probe: ProbeEngineBackend,
    looping: Any,
    tiny_paths: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    slots: str,
) -> None:
    # samples/scan.pdf has no text layer: ask's screening scores its pages with the model.
    question = "What is the total?"
    if slots == "engine":
        events = run(http, upload(http, SAMPLES / "scan.pdf")["id"], task="ask", question=question)
        ckpt = tiny_paths["normal"]
        assert probe.answers[SCREEN_PROMPT.format(question=question)]  # went through the queue
    else:  # --batch-size 1: the backend scores a page with prompt_logits
        app = create_app(looping, batch_size=1, max_tokens=MAX_TOKENS)
        with live_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as one:
            events = run(
                one, upload(one, SAMPLES / "scan.pdf")["id"], task="ask", question=question
            )
        ckpt = tiny_paths["loop"]
    assert [e["pages"] for e in events if e["event"] == "screening"] == [2]
    (rec,) = records(events)
    monkeypatch.chdir(SAMPLES)
    want, stderr = cli_ask(ckpt, "scan.pdf", question)
    same(rec, want)  # the same page chosen, the same answer
    (note,) = [e["message"] for e in events if e["event"] == "note"]
    assert note.startswith("scan.pdf: screened 2 pages at HD4 for the question; answering page")
    # the CLI's note, word for word, its scores to the third decimal (within rounding)
    (cli_note,) = [line for line in stderr.splitlines() if line.startswith("scan.pdf: screened")]
    number = re.compile(r"-?\d+\.\d+")
    assert number.sub("#", note) == number.sub("#", cli_note)
    for mine, theirs in zip(number.findall(note), number.findall(cli_note), strict=True):
        assert float(mine) == pytest.approx(float(theirs), abs=2e-3)


def test_a_chart_table_is_chart_tables_record(
    http: httpx.Client, tiny_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = upload(http, SAMPLES / "chart.png")
    (rec,) = records(run(http, doc["id"], task="chart_table"))
    assert (rec["task"], rec["prompt"]) == ("chart", CHART_TABLE.prompt)
    monkeypatch.chdir(SAMPLES)
    (want,) = cli_records(tiny_paths, "chart", "chart.png", "--table")
    same(rec, want)


def test_downloads_are_the_records_of_the_run(http: httpx.Client) -> None:
    doc = upload(http, SAMPLES / "paper.pdf")
    url = f"{DOCS}/{doc['id']}/records"
    r = http.get(url)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "no_records")
    got = records(run(http, doc["id"], task="extract"))
    r = http.get(url, params={"format": "jsonl"})
    assert r.headers["content-disposition"].startswith('attachment; filename="paper.jsonl"')
    lines = r.text.splitlines()
    assert [validate_line(line).to_dict() for line in lines] == got
    md = http.get(url, params={"format": "md"})
    assert 'filename="paper.md"' in md.headers["content-disposition"]
    want = "\n".join(f"<!-- ixcdoc: paper.pdf page {r['page']}/2 -->\n{r['text']}\n" for r in got)
    assert md.text == want
    # a page run again replaces its record: the download has one line per page
    run(http, doc["id"], task="extract", pages="1")
    assert len(http.get(url).text.splitlines()) == 2


def test_a_bad_page_range_is_400_before_anything_runs(http: httpx.Client) -> None:
    doc = upload(http, SAMPLES / "paper.pdf")
    r = http.post(f"{DOCS}/{doc['id']}/runs", json={"task": "extract", "pages": "3"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "page_out_of_range")
    r = http.post(f"{DOCS}/{doc['id']}/runs", json={"task": "extract", "extra": 1})
    assert r.status_code == 400
    r = http.post(f"{DOCS}/{doc['id']}/runs", json={"task": "extract", "speculate": "on"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request")
    assert r.json()["error"]["message"] == "speculate must be one of auto, off, got 'on'"


def test_a_run_with_speculation_off_drafts_nothing(http: httpx.Client) -> None:
    doc = upload(http, SAMPLES / "paper.pdf")
    (rec,) = records(run(http, doc["id"], task="extract", pages="1", speculate="off"))
    assert (rec["timings"]["draft_tokens"], rec["timings"]["accepted_tokens"]) == (0, 0)


def test_one_request_at_a_time_runs_the_page_through_chat(
    looping: Any, tiny_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # --batch-size 1: the backend runs DocModel.chat, and so does the page (ServedModel.chat).
    app = create_app(looping, batch_size=1, max_tokens=MAX_TOKENS)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        doc = upload(http, SAMPLES / "chart.png")
        (rec,) = records(run(http, doc["id"], task="chart"))
    monkeypatch.chdir(SAMPLES)
    model = ["--model", str(tiny_paths["loop"]), "--device", "cpu", "--batch-size", "1"]
    result = CliRunner().invoke(
        cli_app,
        ["chart", "chart.png", "--json", "--max-new-tokens", str(MAX_TOKENS), *model],
        catch_exceptions=False,
    )
    (want,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert rec["timings"]["tokens"] == MAX_TOKENS  # the looping model runs to the limit
    same(rec, want)


def test_a_busy_server_says_429_at_once(looping: Any) -> None:
    # Not `tiny`: an engine keeps its KV cache in the model, and the module's server has one.
    backend = ProbeEngineBackend(looping, n_slots=1, max_len=512, max_queue=1, hold=True)
    app = create_app(looping, backend=backend)
    done = threading.Semaphore(0)
    image = Image.new("RGB", (60, 40), "white")
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT) as http,
    ):
        doc = upload(http, SAMPLES / "chart.png")
        for _ in range(2):  # one on the engine (held), one waiting: the queue is full
            request = ChatRequest([image], "hi", hd=1, meta_instruction="", max_new_tokens=2)
            backend.submit(request, lambda _: True, lambda *_: done.release())
        assert backend.entered.wait(TIMEOUT)
        r = http.post(f"{DOCS}/{doc['id']}/runs", json={"task": "chart"})
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "queue_full" and int(r.headers["retry-after"]) >= 1
        backend.release.set()
        assert done.acquire(timeout=TIMEOUT) and done.acquire(timeout=TIMEOUT)


def test_a_browser_that_leaves_stops_its_run(looping: Any) -> None:
    backend = ProbeEngineBackend(looping, n_slots=1, max_len=4096, max_queue=4)
    app = create_app(looping, backend=backend)
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT) as http,
    ):
        doc = upload(http, SAMPLES / "chart.png")
        with http.stream("POST", f"{DOCS}/{doc['id']}/runs", json={"task": "extract"}) as r:
            for line in r.iter_lines():
                if json.loads(line)["event"] == "text":
                    break  # the model is generating: leave
        with backend._lock:
            assert backend._lock.wait_for(lambda: backend.depth == 0, TIMEOUT)
        answer = backend.answers[EXTRACT.prompt]
        assert answer.stop_reason == "callback"
        assert len(answer.token_ids) < EXTRACT.max_new_tokens


# ---- the OpenAI routes: model names, CORS --------------------------------------------------------


def test_an_unknown_model_is_404_model_not_found(http: httpx.Client) -> None:
    listed = http.get("/v1/models").json()["data"]
    assert [m["id"] for m in listed] == ["tiny"]
    r = http.post("/v1/chat/completions", json=chat_body("hi", model="gpt-4o"))
    err = r.json()["error"]
    assert (r.status_code, err["code"], err["param"]) == (404, "model_not_found", "model")
    assert "'gpt-4o'" in err["message"] and "'tiny'" in err["message"]
    body = chat_body("hi")
    del body["model"]  # a client that names no model gets the one there is
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text


def test_cors_answers_preflights_for_the_origins_named_only(tiny: Any) -> None:
    origin = "http://localhost:3000"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    preflight["Access-Control-Request-Headers"] = "authorization,content-type"
    plain = create_app(tiny, api_key=KEY, batch_size=1)
    with live_server(plain) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        r = http.options("/v1/chat/completions", headers=preflight)
        assert r.status_code == 401 and "access-control-allow-origin" not in r.headers
    app = create_app(tiny, api_key=KEY, batch_size=1, cors_origins=[origin])
    with live_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        r = http.options("/v1/chat/completions", headers=preflight)  # no key needed
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        other = {**preflight, "Origin": "http://evil.example"}
        r = http.options("/v1/chat/completions", headers=other)
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
        r = http.get("/v1/models", headers={"Origin": origin})  # the key is still needed
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == origin
        r = http.get("/v1/models", headers={"Origin": origin, **AUTH})
        assert r.status_code == 200 and r.headers["access-control-expose-headers"] == "Retry-After"


def test_cors_origins_must_be_origins() -> None:
    from ixcdoc.errors import UsageError
    from ixcdoc.serve.cors import check_origin

    assert check_origin("https://chat.example:8443") == "https://chat.example:8443"
    assert check_origin("*") == "*"
    for bad in ("localhost:3000", "http://localhost:3000/", "ftp://x", "http://x/path"):
        with pytest.raises(UsageError, match="--cors-origin"):
            check_origin(bad)


# ---- the runner's model, served ----------------------------------------------------------------


def test_the_served_model_offers_only_what_goes_through_the_backend(
    tiny: Any, probe: ProbeEngineBackend
) -> None:
    served = ServedModel(tiny, probe, RunControl())
    assert served.config is tiny.config and served.tokenizer is tiny.tokenizer
    with pytest.raises(AttributeError, match=r"DocModel\.chat_batch is not routed"):
        _ = served.chat_batch
    cache = tiny.model.model.layers[0].attention.kv_cache
    served.free_cache()  # the server's engine keeps its cache: the run's end frees nothing
    assert tiny.model.model.layers[0].attention.kv_cache is cache
