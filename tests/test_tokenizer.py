"""The InternLM2 tokenizer against the upstream reference ids of the tiny fixture checkpoint."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ixcdoc.errors import WeightsError
from ixcdoc.tokenizer import ROLE_START, TURN_END, StreamDecoder, Tokenizer

UPSTREAM = Path(__file__).parent / "fixtures" / "upstream"
CKPT = UPSTREAM / "tiny_ckpt"
MANIFEST = json.loads((UPSTREAM / "tiny" / "manifest.json").read_text(encoding="utf-8"))
TEXT_SEGMENTS = [
    (case["prompt_id"], i, seg)
    for case in MANIFEST["chat"]
    for i, seg in enumerate(case["segments"])
    if seg["kind"] == "text"
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_dir(CKPT)


@pytest.mark.parametrize(
    "seg", [s for _, _, s in TEXT_SEGMENTS], ids=[f"{p}{i}" for p, i, _ in TEXT_SEGMENTS]
)
def test_encode_reproduces_upstream_segment_ids(tok: Tokenizer, seg: dict) -> None:
    assert tok.encode(seg["text"]) == seg["ids"]


def test_special_ids_come_from_the_files(tok: Tokenizer) -> None:
    for name, tid in MANIFEST["special_ids"].items():
        assert tok.special_ids[name] == tid
        assert tok.token_to_id(name) == tid
        assert tok.id_to_piece(tid) == name
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (1, 2, 0, 2)
    assert tok.vocab_size == 1000


def test_stop_ids_are_eos_and_turn_end_by_name(tok: Tokenizer) -> None:
    assert tok.stop_ids == (2, 998)
    assert tok.stop_ids[1] == tok.special_ids[TURN_END]


def test_empty_text_is_just_bos(tok: Tokenizer) -> None:
    assert tok.encode("") == [1]
    assert tok.encode("", bos=False) == []
    assert tok.encode("hello", bos=False) == tok.encode("hello")[1:]


def test_special_strings_are_atomic_and_whitespace_is_kept(tok: Tokenizer) -> None:
    ids = tok.encode(f"a{ROLE_START}user\nb<s>c</s>{TURN_END}\n", bos=False)
    assert ids.count(999) == 1 and ids.count(998) == 1
    assert ids.count(1) == 1 and ids.count(2) == 1
    # the newline right after a special token is its own byte piece, not stripped
    assert ids[-2:] == [998, tok.token_to_id("<0x0A>")]
    assert ids[ids.index(999) + 1 : ids.index(999) + 1 + len(tok.encode("user\n", bos=False))] == (
        tok.encode("user\n", bos=False)
    )
    assert tok.encode(" x", bos=False) != tok.encode("x", bos=False)  # leading space kept


def test_decode_skips_specials(tok: Tokenizer) -> None:
    prompt = MANIFEST["chat"][0]["full_prompt"].replace("<ImageHere>", "")
    ids = tok.encode(prompt)
    plain = prompt
    for name in tok.special_ids:
        plain = plain.replace(name, "")
    assert tok.decode(ids) == plain
    assert tok.decode(ids, skip_special=False) == "<s>" + prompt


@pytest.mark.parametrize("case", MANIFEST["chat"], ids=lambda c: c["prompt_id"])
def test_decode_matches_upstream_greedy_text(tok: Tokenizer, case: dict) -> None:
    assert tok.decode(case["greedy_tokens"]) == case["greedy_text"]


def test_round_trip_with_byte_fallback(tok: Tokenizer) -> None:
    text = "Invoice 42: 中文 文档 😀 naïve  spaces\n\ttab"
    ids = tok.encode(text, bos=False)
    assert any(tok.id_to_piece(i).startswith("<0x") for i in ids)
    assert tok.decode(ids) == text


def test_ids_outside_the_vocabulary_decode_as_unk(tok: Tokenizer) -> None:
    assert tok.decode([931, 5000, 931]) == "aa"
    assert tok.decode([931, 5000, 931], skip_special=False) == "a<unk>a"


def _stream_all(tok: Tokenizer, ids: list[int], skip_special: bool = True) -> list[str]:
    dec = StreamDecoder(tok, skip_special=skip_special)
    deltas = [dec.push(i) for i in ids]
    deltas.append(dec.flush())
    assert dec.text == "".join(deltas)
    return deltas


@pytest.mark.parametrize(
    "text",
    [
        "Please describe this image in detail.",
        "中文 文档: 上海人工智能实验室",
        "emoji 😀😀 and 🇫🇷 flags, naïve café",
        "  leading spaces\n\nand  double  spaces ",
        f"turn{TURN_END}\n{ROLE_START}assistant\nok</s>",
    ],
)
def test_stream_decoder_equals_whole_decode(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    for skip in (True, False):
        assert "".join(_stream_all(tok, ids, skip)) == tok.decode(ids, skip_special=skip)


def test_stream_decoder_holds_back_partial_utf8(tok: Tokenizer) -> None:
    ids = tok.encode("😀", bos=False)
    assert len(ids) == 4  # four byte-fallback pieces
    dec = tok.stream()
    assert [dec.push(i) for i in ids] == ["", "", "", "😀"]
    assert dec.flush() == ""


def test_stream_decoder_leading_space_pieces(tok: Tokenizer) -> None:
    ids = tok.encode("the image shows a table", bos=False)
    deltas = _stream_all(tok, ids)
    assert "".join(deltas) == "the image shows a table"
    assert any(d.startswith(" ") for d in deltas)  # the space comes with the next word


def test_stream_decoder_random_sequences(tok: Tokenizer) -> None:
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(0, 30))]
        # bias towards byte pieces (ids 3..258) to build and break UTF-8 sequences
        ids += [rng.randrange(3, 259) for _ in range(rng.randint(0, 8))]
        rng.shuffle(ids)
        for skip in (True, False):
            assert "".join(_stream_all(tok, ids, skip)) == tok.decode(ids, skip_special=skip)


def test_missing_tokenizer_model_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=re.escape(str(tmp_path / "tokenizer.model"))):
        Tokenizer.from_dir(tmp_path)


def test_corrupt_tokenizer_model_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(WeightsError, match=re.escape(str(tmp_path / "tokenizer.model"))):
        Tokenizer.from_dir(tmp_path)


def test_broken_json_names_the_file(tmp_path: Path) -> None:
    shutil.copy(CKPT / "tokenizer.model", tmp_path / "tokenizer.model")
    (tmp_path / "added_tokens.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(WeightsError, match=re.escape(str(tmp_path / "added_tokens.json"))):
        Tokenizer.from_dir(tmp_path)


def test_tokenizer_model_alone_still_finds_bos_eos_and_turn_end(tmp_path: Path) -> None:
    shutil.copy(CKPT / "tokenizer.model", tmp_path / "tokenizer.model")
    tok = Tokenizer.from_dir(tmp_path)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.stop_ids == (2, 998)


def test_added_token_ids_follow_the_json_files(tmp_path: Path) -> None:
    """An added token outside the SentencePiece table is encoded and decoded from the files."""
    for f in CKPT.iterdir():
        if f.suffix in (".model", ".json") and not f.name.startswith("pytorch_model"):
            shutil.copy(f, tmp_path / f.name)
    added = json.loads((tmp_path / "added_tokens.json").read_text(encoding="utf-8"))
    added["<extra>"] = 1000
    (tmp_path / "added_tokens.json").write_text(json.dumps(added), encoding="utf-8")
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.vocab_size == 1001
    a, b = tok.encode("a", bos=False), tok.encode("b", bos=False)
    assert tok.encode("a<extra>b", bos=False) == [*a, 1000, *b]
    assert tok.decode([*a, 1000, *b]) == "ab"
    assert tok.decode([*a, 1000, *b], skip_special=False) == "a<extra>b"


def test_text_modules_do_not_import_torch() -> None:
    code = (
        "import sys, ixcdoc.tokenizer, ixcdoc.prompt, ixcdoc.hub, ixcdoc.tinyckpt\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_special_tokens_match_longest_first(tmp_path: Path) -> None:
    """ "<pre>" is a prefix of "<pre>fix": the longer token wins wherever it appears."""
    for f in CKPT.iterdir():
        if f.suffix in (".model", ".json") and not f.name.startswith("pytorch_model"):
            shutil.copy(f, tmp_path / f.name)
    added = json.loads((tmp_path / "added_tokens.json").read_text(encoding="utf-8"))
    added.update({"<pre>": 1000, "<pre>fix": 1001})  # the shorter one first, as a file may list
    (tmp_path / "added_tokens.json").write_text(json.dumps(added), encoding="utf-8")
    tok = Tokenizer.from_dir(tmp_path)
    a = tok.encode("a", bos=False)
    assert tok.split_special("a<pre>fix<pre>a") == ["a", "<pre>fix", "<pre>", "a"]
    assert tok.encode("a<pre>fix", bos=False) == [*a, 1001]
    assert tok.encode("<pre>a", bos=False) == [1000, *a]


def test_text_utf8_cannot_carry_is_a_usage_error_naming_the_character() -> None:
    from ixcdoc.errors import UsageError
    from ixcdoc.tokenizer import check_text

    assert check_text("café ✓") == "café ✓"
    with pytest.raises(UsageError, match=r"the query is not valid UTF-8: byte 0xff at character 3"):
        check_text("ab\udcffc", "the query")  # how Python receives byte 0xff in an argument
    with pytest.raises(UsageError, match=r"U\+D800 at character 1"):
        check_text("\ud800")  # a lone surrogate from a JSON escape


def test_encoding_text_with_a_lone_surrogate_is_a_usage_error(tok: Tokenizer) -> None:
    """Every prompt goes through encode (chat, the engine, the server): one usage error there,
    not SentencePiece's cast error."""
    from ixcdoc.errors import UsageError

    with pytest.raises(UsageError, match="not valid UTF-8: byte 0xff"):
        tok.encode("What is \udcff here?")
