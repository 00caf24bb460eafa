"""The chat template and the image splicing against the upstream reference prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ixcdoc.errors import UsageError
from ixcdoc.prompt import (
    DEFAULT_META_INSTRUCTION,
    IMAGE_PLACEHOLDER,
    ImagePart,
    TextPart,
    build_chat_prompt,
    split_prompt,
)
from ixcdoc.tokenizer import Tokenizer

UPSTREAM = Path(__file__).parent / "fixtures" / "upstream"
MANIFEST = json.loads((UPSTREAM / "tiny" / "manifest.json").read_text(encoding="utf-8"))
CASES = MANIFEST["chat"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_dir(UPSTREAM / "tiny_ckpt")


def test_default_meta_instruction_is_upstream() -> None:
    assert MANIFEST["meta_instruction_upstream_default"] == DEFAULT_META_INSTRUCTION


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["prompt_id"])
def test_full_prompt_matches_upstream(case: dict) -> None:
    prompt = build_chat_prompt(case["query"], meta_instruction=case["meta_instruction"])
    assert prompt == case["full_prompt"]


def test_default_meta_is_used_when_not_given() -> None:
    case = next(c for c in CASES if c["meta_instruction_is_upstream_default"])
    assert build_chat_prompt(case["query"]) == case["full_prompt"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["prompt_id"])
def test_split_prompt_matches_upstream_segments(tok: Tokenizer, case: dict) -> None:
    parts = split_prompt(case["full_prompt"], tok, n_images=1)
    assert len(parts) == len(case["segments"])
    for part, seg in zip(parts, case["segments"], strict=True):
        if seg["kind"] == "text":
            assert isinstance(part, TextPart)
            assert part.ids == seg["ids"]
            assert part.text == seg["text"]
            assert len(part.ids) == seg["length"]
        else:
            assert part == ImagePart(index=seg["index"])


def test_every_text_part_starts_with_bos(tok: Tokenizer) -> None:
    prompt = build_chat_prompt(f"a{IMAGE_PLACEHOLDER}b{IMAGE_PLACEHOLDER}c", n_images=2)
    parts = split_prompt(prompt, tok, n_images=2)
    texts = [p for p in parts if isinstance(p, TextPart)]
    assert len(texts) == 3
    assert all(p.ids[0] == tok.bos_id and p.ids.count(tok.bos_id) == 1 for p in texts)
    assert [p.index for p in parts if isinstance(p, ImagePart)] == [0, 1]


def test_empty_text_parts_are_skipped(tok: Tokenizer) -> None:
    parts = split_prompt(f"{IMAGE_PLACEHOLDER}x{IMAGE_PLACEHOLDER}", tok, n_images=2)
    assert parts == [ImagePart(0), TextPart(ids=tok.encode("x"), text="x"), ImagePart(1)]


def test_system_block_only_with_meta_instruction() -> None:
    assert build_chat_prompt("hi", meta_instruction="", n_images=0) == (
        "[UNUSED_TOKEN_146]user\nhi[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n"
    )
    assert build_chat_prompt("hi", meta_instruction="M", n_images=0) == (
        "[UNUSED_TOKEN_146]system\nM[UNUSED_TOKEN_145]\n"
        "[UNUSED_TOKEN_146]user\nhi[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n"
    )


def test_history_turns() -> None:
    prompt = build_chat_prompt(
        "q2", meta_instruction="", n_images=1, history=[(f"{IMAGE_PLACEHOLDER}q1", "a1")]
    )
    assert prompt == (
        "[UNUSED_TOKEN_146]user\n<ImageHere>q1[UNUSED_TOKEN_145]\n"
        "[UNUSED_TOKEN_146]assistant\na1[UNUSED_TOKEN_145]\n"
        "[UNUSED_TOKEN_146]user\nq2[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n"
    )


def test_missing_placeholders_are_prepended_to_the_query() -> None:
    prompt = build_chat_prompt("Read it.", meta_instruction="", n_images=2)
    assert "user\n<ImageHere><ImageHere>Read it.[UNUSED_TOKEN_145]" in prompt
    prompt = build_chat_prompt(f"a{IMAGE_PLACEHOLDER}b", meta_instruction="", n_images=2)
    assert "user\n<ImageHere>a<ImageHere>b[UNUSED_TOKEN_145]" in prompt
    assert IMAGE_PLACEHOLDER not in build_chat_prompt("x", n_images=0)


def test_too_many_placeholders_is_a_usage_error_naming_both_counts() -> None:
    with pytest.raises(UsageError, match=r"3 <ImageHere> placeholders but 2 images"):
        build_chat_prompt(IMAGE_PLACEHOLDER * 3, n_images=2)
    with pytest.raises(UsageError, match=r"1 <ImageHere> placeholder but 0 images"):
        build_chat_prompt(f"{IMAGE_PLACEHOLDER}x", n_images=0)
    with pytest.raises(UsageError):
        build_chat_prompt("x", n_images=-1)


def test_split_prompt_count_mismatch(tok: Tokenizer) -> None:
    with pytest.raises(UsageError, match=r"1 <ImageHere> placeholder but 2 images"):
        split_prompt(f"a{IMAGE_PLACEHOLDER}b", tok, n_images=2)
    with pytest.raises(UsageError, match=r"2 <ImageHere> placeholders but 1 image was"):
        split_prompt(IMAGE_PLACEHOLDER * 2, tok, n_images=1)


def test_text_only_prompt_is_one_part(tok: Tokenizer) -> None:
    prompt = build_chat_prompt("hello", n_images=0)
    assert split_prompt(prompt, tok, n_images=0) == [TextPart(ids=tok.encode(prompt), text=prompt)]
