"""Requests to ixcdoc's query: the conversation fold, image placement, image URL decoding."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pymupdf
import pytest

from ixcdoc.errors import InputError, UsageError
from ixcdoc.prompt import DEFAULT_META_INSTRUCTION, build_chat_prompt
from ixcdoc.serve.images import UrlRefused, data_url_bytes, fetched
from ixcdoc.serve.pages import PageLimits, close_pages, open_pages
from ixcdoc.serve.schema import Message, fold_turns, to_conversation
from tests.serve.helpers import data_url, page_png


def _msgs(*raw: dict[str, Any]) -> list[Message]:
    return [Message.model_validate(m) for m in raw]


def _img(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.mark.parametrize(
    "history",
    [[], [("What is it?", "A form.")], [("<ImageHere>a", "b"), ("c", "d\nwith lines")]],
)
def test_folded_turns_give_the_upstream_history_template(history: list[tuple[str, str]]) -> None:
    n = sum(u.count("<ImageHere>") for u, _ in history)
    folded = build_chat_prompt(fold_turns(history, "Last?"), meta_instruction="S", n_images=n)
    assert folded == build_chat_prompt("Last?", meta_instruction="S", n_images=n, history=history)


def test_images_go_before_the_text_of_their_message() -> None:
    conv = to_conversation(
        _msgs(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    _img("data:,a"),
                    {"type": "text", "text": "these."},
                    _img("data:,b"),
                ],
            }
        )
    )
    assert conv.query == "<ImageHere><ImageHere>Compare\nthese."
    assert conv.image_urls == ["data:,a", "data:,b"]
    assert conv.meta_instruction == DEFAULT_META_INSTRUCTION


def test_system_messages_join_and_an_empty_one_drops_the_block() -> None:
    conv = to_conversation(
        _msgs(
            {"role": "system", "content": "One."},
            {"role": "developer", "content": [{"type": "text", "text": "Two."}]},
            {"role": "user", "content": "Q"},
        )
    )
    assert conv.meta_instruction == "One.\nTwo."
    empty = to_conversation(
        _msgs({"role": "system", "content": ""}, {"role": "user", "content": "Q"})
    )
    assert empty.meta_instruction == ""


def test_consecutive_user_messages_are_one_turn() -> None:
    conv = to_conversation(
        _msgs({"role": "user", "content": "A"}, {"role": "user", "content": "B"})
    )
    assert conv.query == "A\nB"


@pytest.mark.parametrize(
    "raw",
    [
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
        [{"role": "system", "content": "only a system prompt"}],
        [{"role": "assistant", "content": [_img("data:,a")]}, {"role": "user", "content": "x"}],
    ],
)
def test_conversations_ixcdoc_cannot_answer_are_usage_errors(raw: list[dict[str, Any]]) -> None:
    with pytest.raises(UsageError):
        to_conversation(_msgs(*raw))


def test_data_urls_decode_base64_and_percent_encoding() -> None:
    payload = b"\x89PNG\r\n\x1a\n\x00\xff"
    assert data_url_bytes("data:image/png;base64," + base64.b64encode(payload).decode()) == payload
    # Line-wrapped base64, as some encoders write it
    wrapped = base64.encodebytes(payload * 20).decode()
    assert "\n" in wrapped
    assert data_url_bytes("data:image/png;base64," + wrapped) == payload * 20
    assert data_url_bytes("data:text/plain,a%20b%FF") == b"a b\xff"


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "/etc/passwd", "etc/passwd", "ftp://h/x", "gopher://h", "C:\\x.png"],
)
def test_only_data_and_http_urls_are_read(url: str) -> None:
    with pytest.raises(UrlRefused):
        fetched(url, allow_urls=True)


def test_http_needs_allow_urls() -> None:
    with pytest.raises(UrlRefused, match="--allow-urls"):
        fetched("https://example.com/a.png", allow_urls=False)
    assert fetched("https://example.com/a.png", allow_urls=True)
    assert not fetched("data:image/png;base64,", allow_urls=True)


def _limits(max_pixels: int = 10**8) -> PageLimits:
    return PageLimits(max_images=4, max_pixels=max_pixels, max_bytes=10**7, allow_urls=False)


def test_a_pdf_data_url_gives_its_first_page() -> None:
    doc = pymupdf.open()
    doc.new_page(width=400, height=200).insert_text((20, 60), "landscape first page")
    doc.new_page(width=200, height=400).insert_text((20, 60), "portrait second page")
    url = data_url(doc.tobytes(), "application/pdf")
    [page] = asyncio.run(open_pages([url], _limits()))
    try:
        assert page.width > page.height  # the landscape page 1, not the portrait page 2
        image = page.doc.render(1).image
        assert image.mode == "RGB"
        assert image.size == (page.width, page.height)  # the header told the truth
    finally:
        close_pages([page])


def test_the_pixel_limit_applies_to_data_urls() -> None:
    url = data_url(page_png(size=(100, 100)))
    with pytest.raises(InputError) as e:
        asyncio.run(open_pages([url], _limits(max_pixels=5000)))
    assert e.value.code == "too_large"
