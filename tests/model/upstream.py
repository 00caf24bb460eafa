"""Helpers over the upstream reference fixtures (tests/fixtures/upstream, a copy of shared/)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

UPSTREAM = Path(__file__).resolve().parents[1] / "fixtures" / "upstream"
TINY_CKPT = UPSTREAM / "tiny_ckpt"


@lru_cache(maxsize=1)
def manifest() -> dict[str, Any]:
    """The tiny-model manifest (encode and chat cases)."""
    return json.loads((UPSTREAM / "tiny" / "manifest.json").read_text(encoding="utf-8"))


def tensor(rel: str) -> torch.Tensor:
    """A reference tensor by its manifest path (relative to the fixture root)."""
    return torch.load(UPSTREAM / rel, weights_only=True)


def encode_cases() -> list[dict[str, Any]]:
    return manifest()["encode"]


def chat_cases() -> list[dict[str, Any]]:
    return manifest()["chat"]


def case_id(case: dict[str, Any]) -> str:
    name = Path(case["image"]).stem
    return f"{name}-hd{case['hd_num']}" + (f"-{case['prompt_id']}" if "prompt_id" in case else "")


def chat_parts(case: dict[str, Any]) -> list[torch.Tensor]:
    """The spliced parts of a chat case: text ids from ``segments``, reference image embeds."""
    embeds = tensor(case["embeds"])
    return [
        torch.tensor(s["ids"], dtype=torch.long) if s["kind"] == "text" else embeds
        for s in case["segments"]
    ]
