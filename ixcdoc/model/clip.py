"""CLIP ViT vision tower, written natively with the Hugging Face ``CLIPVisionModel`` key names.

Why not ``transformers.CLIPVisionModel``: its constructor, attention plumbing and image-size
checks changed across 4.3x-5.x (upstream breaks on several of them), importing it costs
seconds, and we need only the forward up to the last encoder layer. The maths is the same
(checked against transformers in tests): patch conv without bias, CLS + 577 learned
positions, ``pre_layrnorm``, pre-norm encoder layers with quick_gelu MLPs. Attention runs
through torch SDPA.

The features upstream uses are ``hidden_states[-1]``: the output of the last encoder layer
*before* ``post_layernorm``, CLS dropped. So ``post_layernorm`` is not built at all (the
official checkpoint does not ship it either; the loader ignores it if present).

Module path under the composed model: ``vit.vision_tower.vision_model.*``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ixcdoc.config import VisionConfig


def _activation(name: str):
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    raise ValueError(f"unsupported vision hidden_act {name!r}")


class CLIPEmbeddings(nn.Module):
    """Patch conv + CLS token + learned absolute positions."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.class_embedding = nn.Parameter(torch.empty(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(
            cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size, bias=False
        )
        self.num_positions = cfg.grid * cfg.grid + 1
        self.position_embedding = nn.Embedding(self.num_positions, cfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values: [B, 3, T, T] -> [B, 1 + (T/p)^2, C]."""
        dtype = self.patch_embedding.weight.dtype
        x = self.patch_embedding(pixel_values.to(dtype))  # [B, C, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, g*g, C], row-major patches
        cls = self.class_embedding.expand(x.shape[0], 1, -1)  # [B, 1, C]
        x = torch.cat([cls, x], dim=1)  # [B, 1 + g*g, C]
        if x.shape[1] != self.num_positions:
            raise ValueError(
                f"vision tower expects {self.num_positions - 1} patches per crop, got "
                f"{x.shape[1] - 1} (crop {tuple(pixel_values.shape[-2:])})"
            )
        return x + self.position_embedding.weight[None]


class CLIPAttention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections (no mask)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        c = cfg.hidden_size
        self.n_heads = cfg.num_attention_heads
        self.head_dim = c // self.n_heads
        self.q_proj = nn.Linear(c, c)
        self.k_proj = nn.Linear(c, c)
        self.v_proj = nn.Linear(c, c)
        self.out_proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, C] -> [B, N, C]."""
        b, n, c = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, N, Dh]

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        o = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, Dh], scale 1/sqrt(Dh)
        o = o.transpose(1, 2).reshape(b, n, c)  # [B, N, C]
        return self.out_proj(o)


class CLIPMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.act = _activation(cfg.hidden_act)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class CLIPVisionTransformer(nn.Module):
    """``vision_model``: embeddings, pre_layrnorm (HF's spelling), encoder; no post_layernorm."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.embeddings = CLIPEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.encoder = CLIPEncoder(cfg)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values: [B, 3, T, T] -> last encoder layer output [B, 1 + g*g, C]."""
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.encoder.layers:
            x = layer(x)
        return x


class CLIPVisionModel(nn.Module):
    """``vision_tower``: wraps ``vision_model`` like HF so the checkpoint keys line up."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.vision_model = CLIPVisionTransformer(cfg)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values)


class VisionTower(nn.Module):
    """``vit``: the 4KHD CLIP wrapper; returns patch features, CLS dropped."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.vision_tower = CLIPVisionModel(cfg)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values: [B, 3, T, T] -> patch features [B, (T/p)^2, C] (layer -1, no CLS)."""
        return self.vision_tower(pixel_values)[:, 1:]
