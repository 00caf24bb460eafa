"""Partial LoRA (PLoRA): a linear layer whose LoRA branch fires only at image positions.

Upstream (IXC2 ``PLoRA.forward``) computes the base linear for every token and adds
``Plora_B(Plora_A(x)) * scaling`` only where ``im_mask`` is True. Neither alpha nor scaling is
stored in the checkpoint; the rule for 4KHD is alpha 16 on ``wqkv`` and alpha = rank elsewhere
(so scaling 2.0 on wqkv at rank 8, 1.0 on wo/w1/w2/w3). Dropout is training-only and omitted.

State-dict keys match upstream: ``<name>.weight``, ``<name>.Plora_A.weight``,
``<name>.Plora_B.weight`` (no biases).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WQKV_LORA_ALPHA = 16.0


def lora_scaling(name: str, rank: int) -> float:
    """Scaling (alpha / rank) for the PLoRA layer ``name`` ('wqkv', 'wo', 'w1', 'w2', 'w3')."""
    alpha = WQKV_LORA_ALPHA if name == "wqkv" else float(rank)
    return alpha / rank


class PLoRALinear(nn.Module):
    """Bias-free linear with a LoRA branch applied where ``im_mask`` is True."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        scaling: float,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.scaling = scaling
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, device=device, dtype=dtype),
            requires_grad=False,
        )
        self.Plora_A = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.Plora_B = nn.Linear(rank, out_features, bias=False, device=device, dtype=dtype)

    def base(self, x: torch.Tensor) -> torch.Tensor:
        """Base projection x @ W^T: [..., in] -> [..., out] (overridden for 4-bit)."""
        return F.linear(x, self.weight)

    def lora(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled LoRA branch: [..., in] -> [..., out]."""
        # Same order as upstream (B(A(x)) then * scaling) so bf16 rounding matches.
        return self.Plora_B(self.Plora_A(x)) * self.scaling

    def forward(self, x: torch.Tensor, im_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, S, in], im_mask: [B, S] bool or None (= all False) -> [B, S, out]."""
        out = self.base(x)
        if im_mask is None:
            # Decode steps and text-only calls: upstream adds 0 * LoRA, a numerical no-op.
            return out
        # Gather only the image rows, like upstream ``res[im_mask] += lora(x[im_mask])``:
        # LoRA costs nothing for text tokens and the per-row arithmetic is the same.
        idx = im_mask.reshape(-1).nonzero().squeeze(1)  # [n_img]
        if idx.numel() == 0:
            return out
        x_img = x.reshape(-1, self.in_features).index_select(0, idx)  # [n_img, in]
        out = out.reshape(-1, self.out_features).index_add(0, idx, self.lora(x_img))
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, rank={self.rank}, "
            f"scaling={self.scaling}"
        )
