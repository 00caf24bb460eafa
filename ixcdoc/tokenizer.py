"""The InternLM2 SentencePiece tokenizer, read straight from a checkpoint folder.

Mirrors upstream ``InternLM2Tokenizer`` (a slow transformers tokenizer) without transformers or
remote code: ``tokenizer.model`` for the pieces, plus the special tokens named in
``added_tokens.json``, ``tokenizer_config.json`` (``added_tokens_decoder``) and
``special_tokens_map.json``. Special ids are read from these files, never hard-coded.

Whitespace next to special tokens (one place, see ``Tokenizer.encode``): the text is split on the
special-token strings and every chunk goes to SentencePiece exactly as it is, so the ``\\n`` after
``[UNUSED_TOKEN_145]`` or after a role name is encoded. This reproduces the upstream reference ids
(architecture doc §6); old transformers versions could strip whitespace around specials that were
not ``AddedToken(lstrip=False, rstrip=False)``, and the checkpoint's files mark them so.

Decoding skips the upstream ``clean_up_tokenization`` pass (" ." -> "." and friends): it changes
OCR text and cannot be applied consistently while streaming.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ixcdoc.errors import UsageError, WeightsError

TOKENIZER_MODEL = "tokenizer.model"
ADDED_TOKENS = "added_tokens.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"

ROLE_START = "[UNUSED_TOKEN_146]"  # begins a turn: "[UNUSED_TOKEN_146]user\n"
TURN_END = "[UNUSED_TOKEN_145]"  # ends a turn; a stop token next to EOS

_REPLACEMENT = "\ufffd"


def _token_content(value: Any) -> str | None:
    """A special-token entry is either a string or an AddedToken dict with ``content``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    """Parse an optional JSON file; a missing file reads as {}, a broken one is a WeightsError."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot read tokenizer file ({e})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return data


def check_text(text: str, what: str = "the text") -> str:
    """``text``, if it is text UTF-8 can carry; else a UsageError naming the first bad
    character. A byte that was not UTF-8 in a command-line argument reaches Python as a lone
    surrogate (U+DC80..U+DCFF), which names the byte; the model's tokenizer cannot take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        bad = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise UsageError(f"{what} is not valid UTF-8: {bad} at character {e.start + 1}") from None
    return text


class Tokenizer:
    """InternLM2 tokenizer: SentencePiece pieces plus atomic special tokens."""

    def __init__(
        self,
        sp: Any,
        *,
        added_tokens: Mapping[str, int] | None = None,
        special_tokens: Iterable[str] = (),
        bos_token: str | None = "<s>",
        eos_token: str | None = "</s>",
        unk_token: str | None = "<unk>",
        pad_token: str | None = None,
        source: str = "tokenizer",
    ) -> None:
        """Wrap a loaded ``SentencePieceProcessor``; prefer ``Tokenizer.from_dir``."""
        self._sp = sp
        self._source = source
        self._sp_size = int(sp.get_piece_size())
        # content -> id for every token that is matched atomically before SentencePiece.
        self._added: dict[str, int] = dict(added_tokens or {})
        specials = set(special_tokens)
        for name in (bos_token, eos_token, unk_token, pad_token):
            if name is not None:
                specials.add(name)
        for content in specials:
            if content not in self._added:
                tid = self._sp_piece_id(content)
                if tid is None:
                    raise WeightsError(f"{source}: special token {content!r} has no id")
                self._added[content] = tid
        self._id_to_added: dict[int, str] = {}
        for content, tid in self._added.items():
            self._id_to_added.setdefault(tid, content)
        self.special_ids: dict[str, int] = {c: self._added[c] for c in sorted(specials)}
        self._skip_ids: frozenset[int] = frozenset(self.special_ids.values())

        self.bos_id: int = self._resolve(bos_token, sp.bos_id(), "bos")
        self.eos_id: int = self._resolve(eos_token, sp.eos_id(), "eos")
        self.unk_id: int = self._resolve(unk_token, sp.unk_id(), "unk")
        self.pad_id: int = self._resolve(pad_token, self.eos_id, "pad")
        self.vocab_size: int = max([self._sp_size, *(i + 1 for i in self._id_to_added)])

        turn_end = self.token_to_id(TURN_END)  # by name: 92542 in the real vocabulary
        stops = [self.eos_id] if turn_end is None else [self.eos_id, turn_end]
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys(stops))

        # Longest first so that a token that is a prefix of another never wins.
        names = sorted(self._added, key=len, reverse=True)
        self._split_re = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load ``tokenizer.model`` and the special-token JSON files of a checkpoint folder."""
        import sentencepiece as spm

        from ixcdoc.verbosity import quiet_sentencepiece

        folder = Path(path)
        model_file = folder / TOKENIZER_MODEL
        if not model_file.is_file():
            raise WeightsError(f"{model_file}: tokenizer.model not found")
        try:
            with quiet_sentencepiece(spm):
                sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except Exception as e:  # sentencepiece raises OSError/RuntimeError for a bad proto
            raise WeightsError(f"{model_file}: not a valid SentencePiece model ({e})") from None
        if sp.get_piece_size() == 0:
            raise WeightsError(f"{model_file}: the SentencePiece model has no pieces")

        added_json = _read_json(folder / ADDED_TOKENS)
        config = _read_json(folder / TOKENIZER_CONFIG)
        special_map = _read_json(folder / SPECIAL_TOKENS_MAP)

        added: dict[str, int] = {}
        specials: list[str] = []
        for key, entry in (config.get("added_tokens_decoder") or {}).items():
            content = _token_content(entry)
            if content is None or not str(key).isdigit():
                raise WeightsError(f"{folder / TOKENIZER_CONFIG}: bad added_tokens_decoder entry")
            added[content] = int(key)
            if not isinstance(entry, Mapping) or entry.get("special", True):
                specials.append(content)
        for content, tid in added_json.items():
            if not isinstance(tid, int):
                raise WeightsError(f"{folder / ADDED_TOKENS}: id of {content!r} is not an integer")
            added.setdefault(content, tid)

        def named(key: str) -> str | None:
            return _token_content(special_map.get(key)) or _token_content(config.get(key))

        for value in [
            *special_map.get("additional_special_tokens", []),
            *config.get("additional_special_tokens", []),
        ]:
            content = _token_content(value)
            if content is not None:
                specials.append(content)
        # Tokens listed only in added_tokens.json are special in the InternLM2 files.
        specials.extend(c for c in added_json if c not in specials)
        return cls(
            sp,
            added_tokens=added,
            special_tokens=list(dict.fromkeys(specials)),
            bos_token=named("bos_token") or _piece_or_none(sp, sp.bos_id()),
            eos_token=named("eos_token") or _piece_or_none(sp, sp.eos_id()),
            unk_token=named("unk_token") or _piece_or_none(sp, sp.unk_id()),
            pad_token=named("pad_token"),
            source=str(folder),
        )

    def _sp_piece_id(self, piece: str) -> int | None:
        tid = int(self._sp.piece_to_id(piece))
        if 0 <= tid < self._sp_size and self._sp.id_to_piece(tid) == piece:
            return tid
        return None

    def _resolve(self, name: str | None, fallback: int, what: str) -> int:
        if name is not None:
            return self._added[name]
        if fallback < 0:
            raise WeightsError(f"{self._source}: no {what} token in the tokenizer files")
        return int(fallback)

    # -- lookups -----------------------------------------------------------------------------

    def id_to_piece(self, token_id: int) -> str:
        """The piece (or special-token text) of an id."""
        if token_id in self._id_to_added:
            return self._id_to_added[token_id]
        if not 0 <= token_id < self._sp_size:
            raise IndexError(f"token id {token_id} is outside the vocabulary ({self.vocab_size})")
        return str(self._sp.id_to_piece(token_id))

    def token_to_id(self, token: str) -> int | None:
        """The id of a special token or SentencePiece piece, or None when it does not exist."""
        if token in self._added:
            return self._added[token]
        return self._sp_piece_id(token)

    def is_special(self, token_id: int) -> bool:
        """True for ids that ``decode(skip_special=True)`` drops."""
        return token_id in self._skip_ids

    # -- encode / decode ---------------------------------------------------------------------

    def split_special(self, text: str) -> list[str]:
        """Split text into chunks where every special-token string is its own chunk."""
        if self._split_re is None:
            return [text] if text else []
        return [chunk for chunk in self._split_re.split(text) if chunk]

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Token ids of text: optional BOS, specials atomic, every other chunk verbatim to SP.
        Text that is not valid Unicode (a lone surrogate) is a UsageError."""
        check_text(text)
        ids = [self.bos_id] if bos else []
        for chunk in self.split_special(text):
            tid = self._added.get(chunk)
            if tid is not None:
                ids.append(tid)
            else:
                # No stripping around specials: the reference ids keep "\n" after them.
                ids.extend(self._sp.encode(chunk))
        return ids

    def _sp_decode(self, ids: list[int]) -> str:
        return str(self._sp.decode(ids)) if ids else ""

    def _clamp(self, token_id: int) -> int:
        """Ids a model may emit beyond the SentencePiece table read as <unk>."""
        tid = int(token_id)
        if 0 <= tid < self._sp_size or tid in self._id_to_added:
            return tid
        return self.unk_id

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ids; special tokens are dropped (or written out when skip_special=False)."""
        out: list[str] = []
        run: list[int] = []
        for raw in ids:
            tid = self._clamp(raw)
            if tid in self._skip_ids:
                if not skip_special:
                    out.append(self._sp_decode(run))
                    run = []
                    out.append(self._id_to_added[tid])
                continue
            if tid >= self._sp_size:  # a non-special added token outside the SP table
                out.append(self._sp_decode(run))
                run = []
                out.append(self._id_to_added[tid])
                continue
            run.append(tid)
        out.append(self._sp_decode(run))
        return "".join(out)

    def stream(self, skip_special: bool = True) -> StreamDecoder:
        """A fresh incremental decoder over this tokenizer."""
        return StreamDecoder(self, skip_special=skip_special)

    def __repr__(self) -> str:
        return (
            f"Tokenizer({self._source!r}, vocab_size={self.vocab_size}, bos={self.bos_id}, "
            f"eos={self.eos_id}, stop_ids={self.stop_ids})"
        )


def _piece_or_none(sp: Any, tid: int) -> str | None:
    if 0 <= tid < sp.get_piece_size():
        return str(sp.id_to_piece(tid))
    return None


class StreamDecoder:
    """Incremental detokenizer: ``push`` one id, get the new text; ``flush`` at the end.

    The concatenation of every ``push`` result and the final ``flush`` equals
    ``tokenizer.decode(ids, skip_special)``. Text is decoded over a short window of the previous
    tokens so that SentencePiece's leading-space handling matches a whole-sequence decode, and a
    delta that ends in U+FFFD (an unfinished byte-fallback UTF-8 sequence) is held back until the
    next token completes it.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = True) -> None:
        """Start an empty stream over tokenizer."""
        self._tok = tokenizer
        self._skip_special = skip_special
        self._ids: list[int] = []  # the current run of SentencePiece ids
        self._prefix = 0  # start of the context window in _ids
        self._read = 0  # end of the text already returned
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        """Everything returned so far."""
        return "".join(self._parts)

    def _emit(self, s: str) -> str:
        if s:
            self._parts.append(s)
        return s

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        tok = self._tok
        tid = tok._clamp(token_id)
        if tid in tok._skip_ids or tid >= tok._sp_size:
            if tid in tok._skip_ids and self._skip_special:
                return ""
            # The run ends here, as in Tokenizer.decode: flush it, then write the token.
            return self.flush() + self._emit(tok._id_to_added[tid])
        self._ids.append(tid)
        prefix_text = tok._sp_decode(self._ids[self._prefix : self._read])
        new_text = tok._sp_decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
            delta = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
            return self._emit(delta)
        return ""

    def flush(self) -> str:
        """Return any held-back text (an incomplete byte sequence decodes to U+FFFD)."""
        tok = self._tok
        prefix_text = tok._sp_decode(self._ids[self._prefix : self._read])
        new_text = tok._sp_decode(self._ids[self._prefix :])
        self._ids, self._prefix, self._read = [], 0, 0
        return self._emit(new_text[len(prefix_text) :])
