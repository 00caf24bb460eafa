"""OpenAI chat-completion requests as pydantic models, and their fold into one ixcdoc query.

Only what ixcdoc can honour is modelled; other OpenAI fields (``user``, ``stop``,
``frequency_penalty``, ...) are accepted and ignored so that stock clients work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ixcdoc.config import MIN_TEMPERATURE
from ixcdoc.engine.request import check_speculate
from ixcdoc.errors import UsageError
from ixcdoc.prompt import DEFAULT_META_INSTRUCTION, IMAGE_PLACEHOLDER
from ixcdoc.tasks import DRAFT_CHARS, parse_hd
from ixcdoc.tokenizer import ROLE_START, TURN_END


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextContent(_Lenient):
    """``{"type": "text", "text": ...}``."""

    type: Literal["text"]
    text: str


class ImageURL(_Lenient):
    """``{"url": "data:...;base64,..." | "https://...", "detail": ...}`` (detail is ignored)."""

    url: str
    detail: str | None = None


class ImageContent(_Lenient):
    """``{"type": "image_url", "image_url": {"url": ...}}``."""

    type: Literal["image_url"]
    image_url: ImageURL


class FileData(_Lenient):
    """``{"file_data": "data:application/pdf;base64,...", "filename": ...}``; no file ids."""

    file_data: str | None = None
    filename: str | None = None
    file_id: str | None = None


class FileContent(_Lenient):
    """``{"type": "file", "file": {...}}``: how OpenAI clients (simonw/llm) send PDFs."""

    type: Literal["file"]
    file: FileData

    def url(self) -> str:
        """The data URL of the file (UsageError for an uploaded-file id, which we lack)."""
        if self.file.file_data is None:
            raise UsageError("file parts must carry file_data (a data URL); file ids are unknown")
        return self.file.file_data


ContentPart = Annotated[TextContent | ImageContent | FileContent, Field(discriminator="type")]


def _image_url(part: ImageContent | FileContent) -> str:
    return part.image_url.url if isinstance(part, ImageContent) else part.url()


class Message(_Lenient):
    """One chat message; ``developer`` is OpenAI's newer name for ``system``."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Lenient):
    """``stream_options``: only ``include_usage`` means something here."""

    include_usage: bool = False


class IxcdocOptions(_Lenient):
    """The ``ixcdoc`` extension field: the HD tier, ``"auto"`` or a whole number >= 1;
    ``speculate`` ("auto": the model checks drafts, several tokens a step; "off") and the
    ``draft`` text it may copy from (a page's text layer, at most ``tasks.DRAFT_CHARS``)."""

    hd: int | str = "auto"
    speculate: str = "auto"
    draft: str | None = Field(default=None, max_length=DRAFT_CHARS)

    @field_validator("speculate")
    @classmethod
    def _check_speculate(cls, v: str) -> str:
        try:
            check_speculate(v)
        except UsageError as e:
            raise ValueError(e.message) from None
        return v

    @field_validator("hd")
    @classmethod
    def _check_hd(cls, v: int | str) -> int | str:
        try:
            parse_hd(v)
        except UsageError as e:
            raise ValueError(e.message) from None
        return v

    def tier(self) -> int | None:
        """None for auto, else the forced tier."""
        return parse_hd(self.hd)


class ChatCompletionRequest(_Lenient):
    """POST /v1/chat/completions."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)  # what torch seeds take
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    ixcdoc: IxcdocOptions = Field(default_factory=IxcdocOptions)

    @field_validator("temperature")
    @classmethod
    def _check_temperature(cls, v: float | None) -> float | None:
        # 0 is greedy; a sampling temperature under the minimum overflows the logits, which
        # would fail the request only once it reached the model (SamplingConfig says why).
        if v is not None and 0 < v < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {v:g}")
        return v


@dataclass(frozen=True)
class Conversation:
    """A request reduced to what ``DocModel.chat`` takes: query, system prompt, image URLs."""

    query: str
    meta_instruction: str
    image_urls: list[str]


def _user_text(content: str | list[ContentPart] | None, urls: list[str]) -> str:
    """A user message as prompt text: its images first (as upstream places them), then text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = [p.text for p in content if isinstance(p, TextContent)]
    images = [_image_url(p) for p in content if not isinstance(p, TextContent)]
    urls.extend(images)
    return IMAGE_PLACEHOLDER * len(images) + "\n".join(texts)


def _plain_text(content: str | list[ContentPart] | None, role: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if any(not isinstance(p, TextContent) for p in content):
        raise UsageError(f"images are only read from user messages, not from {role} messages")
    return "\n".join(p.text for p in content if isinstance(p, TextContent))


def fold_turns(history: list[tuple[str, str]], query: str) -> str:
    """One query string that, through ``build_chat_prompt``, gives the multi-turn template.

    ``build_chat_prompt(fold_turns(h, q), ...) == build_chat_prompt(q, ..., history=h)``: the
    chat template wraps the query in a user turn, so earlier turns are closed and reopened
    inside it with the same role markers (which the tokenizer encodes as single special tokens).
    """
    out = ""
    for user, assistant in history:
        out += f"{user}{TURN_END}\n{ROLE_START}assistant\n{assistant}{TURN_END}\n{ROLE_START}user\n"
    return out + query


def to_conversation(messages: list[Message]) -> Conversation:
    """System/developer messages become the system prompt; user/assistant turns the query.

    Consecutive messages of one role are joined with a newline. The last turn must be the
    user's. Without a system message the upstream default system prompt is used; an empty one
    leaves the system block out.
    """
    system: list[str] = []
    turns: list[tuple[str, str]] = []  # (role, text), roles alternating
    urls: list[str] = []
    for m in messages:
        if m.role in ("system", "developer"):
            system.append(_plain_text(m.content, m.role))
            continue
        text = _user_text(m.content, urls) if m.role == "user" else _plain_text(m.content, m.role)
        if turns and turns[-1][0] == m.role:
            turns[-1] = (m.role, turns[-1][1] + "\n" + text)
        else:
            turns.append((m.role, text))
    if not turns or turns[-1][0] != "user":
        raise UsageError("the last message must be a user message")
    if turns[0][0] != "user":
        turns.insert(0, ("user", ""))
    history = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2)]
    meta = "\n".join(system) if system else DEFAULT_META_INSTRUCTION
    return Conversation(fold_turns(history, turns[-1][1]), meta, urls)
