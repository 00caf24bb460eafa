"""Frozen configuration: the model's shape (read from the checkpoint's config.json) and defaults,
and the decoding options (``SamplingConfig``: the one copy of their defaults, which
``DocModel.chat`` and ``ChatRequest`` read).

The defaults of every field are the official InternLM-XComposer2-4KHD-7B values, so
``ModelConfig()`` describes the real model without any file (used by ``plan`` and the VRAM
estimate). Checkpoint keys are read through one explicit table, ``_LLM_KEYS``.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ixcdoc.errors import WeightsError

DEFAULT_MODEL_ID = "internlm/internlm-xcomposer2-4khd-7b"
# The activations model/clip.py implements, by their transformers names.
VISION_ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")
# Fields that may be 0 (token ids); every other whole number is a size or count >= 1.
_MAY_BE_ZERO = frozenset({"bos_token_id", "eos_token_id", "pad_token_id"})


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
        if not isinstance(raw, dict):
            raise WeightsError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        for required in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            if required not in raw:
                raise WeightsError(f"{source}: missing required key {required!r}")
        kwargs: dict[str, Any] = {
            f.name: _field_value(source, "", f.name, getattr(cls(), f.name), raw[f.name])
            for f in fields(cls)
            if f.name not in ("vision", "wqkv_lora_rank", "lora_rank")
            and f.name in raw
            and raw[f.name] is not None
        }
        if raw.get("rope_scaling"):
            raise WeightsError(
                f"{source}: rope_scaling={raw['rope_scaling']!r} is not supported "
                "(the official checkpoint uses plain RoPE)"
            )
        vraw = raw.get("vision_config")
        vraw = {} if vraw is None else vraw
        if not isinstance(vraw, dict):
            raise WeightsError(f"{source}: vision_config: expected a JSON object")
        vkw = {
            f.name: _field_value(
                source, "vision_config.", f.name, getattr(VisionConfig(), f.name), vraw[f.name]
            )
            for f in fields(VisionConfig)
            if f.name in vraw
        }
        kwargs["vision"] = VisionConfig(**vkw)
        if "num_key_value_heads" not in raw:
            kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
        cfg = cls(**kwargs)
        cfg._check_shapes(source)
        return cfg

    def _check_shapes(self, source: str) -> None:
        """The divisibility the model's reshapes rely on, named by field."""
        v = self.vision

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise WeightsError(f"{source}: {what}")

        need(
            self.hidden_size % self.num_attention_heads == 0,
            f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
            f"{self.num_attention_heads}",
        )
        need(self.head_dim % 2 == 0, f"head dimension {self.head_dim} is odd (RoPE needs pairs)")
        need(
            self.num_attention_heads % self.num_key_value_heads == 0,
            f"num_attention_heads {self.num_attention_heads} is not a multiple of "
            f"num_key_value_heads {self.num_key_value_heads}",
        )
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            need(
                getattr(self, name) < self.vocab_size,
                f"{name} {getattr(self, name)} is not below vocab_size {self.vocab_size}",
            )
        need(
            v.hidden_size % v.num_attention_heads == 0,
            f"vision_config.hidden_size {v.hidden_size} is not a multiple of "
            f"vision_config.num_attention_heads {v.num_attention_heads}",
        )
        need(
            v.image_size % v.patch_size == 0 and (v.image_size // v.patch_size) % 2 == 0,
            f"vision_config.image_size {v.image_size} is not an even multiple of "
            f"vision_config.patch_size {v.patch_size} (the 2x2 token merge needs one)",
        )
        need(
            v.hidden_act in VISION_ACTIVATIONS,
            f"vision_config.hidden_act {v.hidden_act!r} is not one of "
            + ", ".join(VISION_ACTIVATIONS),
        )

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


def _field_value(source: str, prefix: str, name: str, default: Any, value: Any) -> Any:
    """A config.json value checked against its field's type: one error naming the field."""
    where = f"{source}: {prefix}{name}"
    if isinstance(default, str):
        if not isinstance(value, str) or not value:
            raise WeightsError(f"{where}: expected a non-empty string, got {value!r}")
        return value
    if isinstance(default, int):
        low = 0 if name in _MAY_BE_ZERO else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise WeightsError(f"{where}: expected a whole number >= {low}, got {value!r}")
        return value
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise WeightsError(f"{where}: expected a finite number > 0, got {value!r}")
    return float(value)


# The smallest sampling temperature: the logits are divided by it, and far smaller ones (1e-39)
# overflow them to inf, so sampling fails on NaN probabilities. vLLM raises any temperature
# under 0.01 to 0.01 for the same reason; here it is refused (0 is greedy decoding).
MIN_TEMPERATURE = 0.01


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding options. Defaults: greedy, no penalty (the document-reading setting)."""

    max_new_tokens: int = 1024
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 0.8
    top_k: int = 50  # HF's default, which upstream chat inherits when sampling; 0 disables
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "top_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ValueError(f"{name} must be a whole number, got {v!r}")
        for name in ("temperature", "top_p", "repetition_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if self.do_sample and not self.temperature >= MIN_TEMPERATURE:
            raise ValueError(
                f"temperature must be at least {MIN_TEMPERATURE} when sampling, got "
                f"{self.temperature:g} (smaller ones overflow the logits; 0 is greedy decoding)"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
