"""Frozen configuration: the model's shape (read from the checkpoint's config.json) and defaults.

The defaults of every field are the official InternLM-XComposer2-4KHD-7B values, so
``ModelConfig()`` describes the real model without any file (used by ``plan`` and the VRAM
estimate). Checkpoint keys are read through one explicit table, ``_LLM_KEYS``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ixcdoc.errors import WeightsError

DEFAULT_MODEL_ID = "internlm/internlm-xcomposer2-4khd-7b"


@dataclass(frozen=True)
class VisionConfig:
    """CLIP vision tower shape. Defaults: openai/clip-vit-large-patch14-336."""

    image_size: int = 336
    patch_size: int = 14
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    num_channels: int = 3

    @property
    def tile(self) -> int:
        """Side of one HD crop in pixels (336 for the real model)."""
        return self.image_size

    @property
    def grid(self) -> int:
        """Patches per crop side (24 for the real model)."""
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class ModelConfig:
    """InternLM2 decoder + vision tower shape, as read from config.json."""

    vocab_size: int = 92544
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    max_length: int = 16384  # upstream truncates the spliced input embeddings to this
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 2
    torch_dtype: str = "bfloat16"
    # PLoRA ranks: not in config.json upstream; the loader reads them from Plora_A shapes.
    wqkv_lora_rank: int = 8
    lora_rank: int = 256
    vision: VisionConfig = field(default_factory=VisionConfig)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def tile(self) -> int:
        return self.vision.image_size

    @property
    def merged_dim(self) -> int:
        """Channel width after the 2x2 token merge (4 x ViT hidden)."""
        return 4 * self.vision.hidden_size

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
        """Build from a parsed config.json (official keys plus optional ``vision_config``)."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in ("vision", "wqkv_lora_rank", "lora_rank"):
                continue
            if f.name in raw and raw[f.name] is not None:
                kwargs[f.name] = type(getattr(cls(), f.name))(raw[f.name])
        for required in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            if required not in raw:
                raise WeightsError(f"{source}: missing required key {required!r}")
        if raw.get("rope_scaling"):
            raise WeightsError(
                f"{source}: rope_scaling={raw['rope_scaling']!r} is not supported "
                "(the official checkpoint uses plain RoPE)"
            )
        vraw = raw.get("vision_config") or {}
        vkw = {
            f.name: type(getattr(VisionConfig(), f.name))(vraw[f.name])
            for f in fields(VisionConfig)
            if f.name in vraw
        }
        kwargs["vision"] = VisionConfig(**vkw)
        if "num_key_value_heads" not in raw:
            kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Read a checkpoint's config.json."""
        p = Path(path)
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WeightsError(f"{p}: config.json not found") from None
        except (OSError, ValueError) as e:
            raise WeightsError(f"{p}: cannot read config.json ({e})") from None
        return cls.from_dict(raw, source=str(p))
