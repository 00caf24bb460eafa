"""The openai Python package against a live server with a tiny model on the CPU."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from ixcdoc.serve import create_app
from tests.serve.helpers import TIMEOUT, data_url, live_server, page_png, user_message

openai = pytest.importorskip("openai")

KEY = "sk-test-key"


@pytest.fixture(scope="module", params=["chat", "engine"])
def server(tiny: Any, request: pytest.FixtureRequest) -> Any:
    """A live server on each backend: ``--batch-size 1`` (chat) and the batched engine.

    The library's reference answers come from ``twin`` (the same checkpoint loaded again): the
    engine owns ``tiny``'s KV cache while the server runs, so ``tiny.chat`` is refused.
    """
    batch_size = 1 if request.param == "chat" else 4
    app = create_app(tiny, api_key=KEY, model_name="ixc-tiny", batch_size=batch_size)
    with live_server(app) as url:
        yield url


@pytest.fixture
def client(server: str) -> Any:
    c = openai.OpenAI(base_url=server + "/v1", api_key=KEY, timeout=TIMEOUT, max_retries=0)
    yield c
    c.close()


def _page() -> tuple[bytes, Image.Image]:
    png = page_png("Invoice total: 42.00")
    return png, Image.open(io.BytesIO(png)).convert("RGB")


def test_plain_completion_equals_the_library_answer(client: Any, twin: Any) -> None:
    png, page = _page()
    want = twin.chat([page], "What is the total?", hd=4, max_new_tokens=6)
    r = client.chat.completions.create(
        model="ixc-tiny",
        messages=[user_message("What is the total?", data_url(png))],
        max_tokens=6,
        extra_body={"ixcdoc": {"hd": 4}},
    )
    assert r.object == "chat.completion"
    assert r.model == "ixc-tiny"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.choices[0].finish_reason == ("length" if len(want.token_ids) == 6 else "stop")
    assert r.usage.prompt_tokens == want.prompt_tokens
    assert r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.total_tokens == want.prompt_tokens + len(want.token_ids)
    assert r.usage.prompt_tokens_details.image_tokens == want.n_image_tokens
    assert r.model_extra["ixcdoc"]["hd"] == 4


def test_streamed_deltas_join_to_the_library_answer(client: Any, twin: Any) -> None:
    png, page = _page()
    want = twin.chat([page], "Read the page.", hd=4, max_new_tokens=6)
    stream = client.chat.completions.create(
        model="ixc-tiny",
        messages=[user_message("Read the page.", data_url(png))],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ixcdoc": {"hd": 4}},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    content = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(content) == want.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length")
    assert all(f is None for f in finishes[:-1])
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage.completion_tokens == len(want.token_ids)
    assert usage.prompt_tokens == want.prompt_tokens


def test_auto_tier_is_the_planners_choice(client: Any, twin: Any) -> None:
    from ixcdoc.planning import choose_tier
    from ixcdoc.tasks import ASK

    png = page_png("wide page", size=(400, 100))
    want = choose_tier(100, 400, ASK, cfg=twin.config, max_new_tokens=2, quant="fp32").hd
    r = client.chat.completions.create(
        model="ixc-tiny",
        messages=[user_message("Read it.", data_url(png))],
        max_tokens=2,
    )
    assert r.model_extra["ixcdoc"]["hd"] == want


def test_system_prompt_and_history_reach_the_model(client: Any, twin: Any) -> None:
    from ixcdoc.prompt import IMAGE_PLACEHOLDER
    from ixcdoc.tokenizer import ROLE_START, TURN_END

    png, page = _page()
    # The same conversation written as one query with the template's turn markers.
    query = (
        f"{IMAGE_PLACEHOLDER}What is it?{TURN_END}\n{ROLE_START}assistant\nAn invoice."
        f"{TURN_END}\n{ROLE_START}user\nAnd the total?"
    )
    want = twin.chat([page], query, hd=4, max_new_tokens=6, meta_instruction="Be brief.")
    r = client.chat.completions.create(
        model="ixc-tiny",
        messages=[
            {"role": "system", "content": "Be brief."},
            user_message("What is it?", data_url(png)),
            {"role": "assistant", "content": "An invoice."},
            {"role": "user", "content": "And the total?"},
        ],
        max_tokens=6,
        extra_body={"ixcdoc": {"hd": 4}},
    )
    assert r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens == want.prompt_tokens


def test_models_lists_the_served_name(client: Any) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["ixc-tiny"]


def test_a_text_only_question_needs_no_image(client: Any, twin: Any) -> None:
    want = twin.chat([], "Say hello.", hd=4, max_new_tokens=4)
    r = client.chat.completions.create(
        model="ixc-tiny", messages=[{"role": "user", "content": "Say hello."}], max_tokens=4
    )
    assert r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens_details.image_tokens == 0


def _two_page_pdf() -> bytes:
    import pymupdf

    doc = pymupdf.open()
    doc.new_page(width=300, height=150).insert_text((20, 60), "Page one: total 42")
    doc.new_page(width=150, height=300).insert_text((20, 60), "Page two")
    return doc.tobytes()


def test_a_pdf_reads_its_first_page_as_image_url_or_file_part(client: Any, twin: Any) -> None:
    from ixcdoc.inputs import open_bytes

    pdf = _two_page_pdf()
    with open_bytes(pdf, source="ref") as doc:  # what `ixcdoc ask` would read: page 1
        page = doc.render(1).image
    want = twin.chat([page], "Total?", hd=4, max_new_tokens=6)
    url = data_url(pdf, "application/pdf")
    as_image = user_message("Total?", url)
    as_file = {  # the shape simonw/llm sends PDF attachments in
        "role": "user",
        "content": [
            {"type": "text", "text": "Total?"},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": url}},
        ],
    }
    for message in (as_image, as_file):
        r = client.chat.completions.create(
            model="ixc-tiny",
            messages=[message],
            max_tokens=6,
            extra_body={"ixcdoc": {"hd": 4}},
        )
        assert r.choices[0].message.content == want.text
        assert r.model_extra["ixcdoc"]["grids"] == [list(want.grid)]


@pytest.mark.parametrize("speculate", ["auto", "off"])
def test_a_draft_in_extra_body_gives_the_library_answer(
    client: Any, twin: Any, speculate: str
) -> None:
    """``extra_body={"ixcdoc": {"draft": ..., "speculate": ...}}``: the answer ``chat`` gives
    with the same draft (the same as without one: drafts are verified exactly)."""
    png, page = _page()
    draft = "Invoice total: 42.00"
    want = twin.chat(
        [page], "What is the total?", hd=4, max_new_tokens=6, draft=draft, speculate=speculate
    )
    r = client.chat.completions.create(
        model="ixc-tiny",
        messages=[user_message("What is the total?", data_url(png))],
        max_tokens=6,
        extra_body={"ixcdoc": {"hd": 4, "draft": draft, "speculate": speculate}},
    )
    assert r.choices[0].message.content == want.text
    assert r.usage.completion_tokens == len(want.token_ids)
