"""A checked chat.completions body -> the engine's ``ChatRequest``: the server's limits on
tokens and tier, the images opened (headers only), the tier chosen, then the pixels decoded
within the shared pixel budget; the ``ixcdoc`` extension's ``speculate`` and ``draft`` passed
on as they are (checked and bounded by the schema)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ixcdoc.engine.request import ChatRequest
from ixcdoc.serve.budget import PixelBudget
from ixcdoc.serve.errors import ApiError
from ixcdoc.serve.pages import (
    PageLimits,
    check_image_tokens,
    close_pages,
    decode_pages,
    open_pages,
    request_tier,
)
from ixcdoc.serve.schema import ChatCompletionRequest, Conversation


def largest_tier(cfg: Any) -> int:
    """The largest tier a client may choose: whose crops alone still fit the prompt
    (``max_length``; 113 for the real model), so no request can ask for a giant image."""
    from ixcdoc.tiling import merged_side

    per_crop = merged_side(cfg.tile, cfg.vision.patch_size) ** 2
    return max(1, cfg.max_length // per_crop)


@dataclass
class RequestBuilder:
    """Builds each request's ``ChatRequest`` under one server's limits."""

    model: Any  # the DocModel: its config, and its tier choice (``pages.request_tier``)
    limits: PageLimits
    budget: PixelBudget
    fetcher: ThreadPoolExecutor | None  # http(s) fetches (None: URLs are refused)
    max_tokens: int | None  # --max-tokens

    def __post_init__(self) -> None:
        self.max_hd = largest_tier(self.model.config)

    async def build(self, body: ChatCompletionRequest, conv: Conversation) -> ChatRequest:
        """Check the request, read its images' headers, choose the tier, then decode them."""
        from ixcdoc.tasks import ASK

        cfg = self.model.config
        limit = self.max_tokens
        default_new = min(ASK.max_new_tokens, limit or ASK.max_new_tokens)
        max_new = body.max_completion_tokens or body.max_tokens or default_new
        if limit is not None and max_new > limit:
            field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise ApiError(
                400,
                f"{field} {max_new} is over this server's limit of {limit} (--max-tokens)",
                code="invalid_request",
                param=field,
            )
        hd = body.ixcdoc.tier()
        if hd is not None and hd > self.max_hd:
            raise ApiError(
                400,
                f"ixcdoc.hd {hd} is over {self.max_hd}: more crops than the model's "
                f"{cfg.max_length} positions can hold",
                code="invalid_request",
                param="ixcdoc.hd",
            )
        pages = await open_pages(conv.image_urls, self.limits, self.fetcher)  # headers only
        try:
            hd = hd or request_tier(pages, self.model, max_new)
            check_image_tokens(pages, hd, cfg)  # before a pixel is decoded
            images = await decode_pages(pages, hd, cfg.tile, self.budget)
        finally:
            close_pages(pages)
        sampling = body.temperature is not None and body.temperature > 0
        return ChatRequest(
            images,
            conv.query,
            hd=hd,
            meta_instruction=conv.meta_instruction,
            max_new_tokens=max_new,
            do_sample=sampling,
            temperature=body.temperature if sampling else ChatRequest.temperature,
            top_p=body.top_p if body.top_p is not None else ChatRequest.top_p,
            seed=body.seed,
            draft=body.ixcdoc.draft,
            speculate=body.ixcdoc.speculate,
        )
