"""InternLM-XComposer2-4KHD: vision tower + merge/projector + InternLM2 decoder with PLoRA.

Top-level keys match the official checkpoint: ``model.*``, ``output.*``, ``vit.*``,
``vision_proj.{0,2}.*``, ``plora_glb_GN`` [1, 1, 4C], ``plora_sub_GN`` [1, 1, 1, 4C].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ixcdoc.config import ModelConfig
from ixcdoc.model import merge
from ixcdoc.model.clip import VisionTower
from ixcdoc.model.internlm2 import InternLM2ForCausalLM, LinearFactory, default_linear

# A spliced sequence is a list of parts: token ids [n] (long) or image embeddings [N, D].
Part = torch.Tensor


class XComposer2(InternLM2ForCausalLM):
    """The full model: ``encode_images``, ``splice`` and the decoder ``forward``."""

    def __init__(self, cfg: ModelConfig, make_linear: LinearFactory = default_linear) -> None:
        super().__init__(cfg, make_linear)
        c4 = cfg.merged_dim
        self.vit = VisionTower(cfg.vision)
        self.vision_proj = merge.build_projector(c4, cfg.hidden_size)
        self.plora_glb_GN = nn.Parameter(torch.zeros(1, 1, c4))
        self.plora_sub_GN = nn.Parameter(torch.zeros(1, 1, 1, c4))

    @property
    def tile(self) -> int:
        return self.config.vision.image_size

    @property
    def vision_dtype(self) -> torch.dtype:
        return self.vit.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype

    def vit_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[1, 3, H, W] normalized HD tensor -> ViT batch [1 + h*w, 3, tile, tile]."""
        return merge.vit_batch(pixel_values.to(self.vision_dtype), self.tile)

    def vision_tokens(self, feats: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """One image's ViT features [1 + h*w, g*g, C] -> pre-projection tokens [N, 4C]: the 2x2
        merge and the separators, laid out for the image's grid (``pixel_values`` [1, 3, H, W])."""
        t = self.tile
        rows, cols = pixel_values.shape[-2] // t, pixel_values.shape[-1] // t
        merged = merge.merge_2x2(feats)  # [1 + h*w, g/2, g/2, 4C]
        tokens = merge.layout_tokens(merged, rows, cols, self.plora_glb_GN, self.plora_sub_GN)
        merge.check_token_count(tokens.shape[0], rows, cols, t, self.config.vision.patch_size)
        return tokens

    def encode_images(self, pixels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Normalized HD tensors [1, 3, H, W] (any tiers) -> image embeddings [N_i, D].

        The crops of every image go through the vision tower as one batch; the 2x2 merge,
        separators and ``vision_proj`` then run per image. The one vision encode: ``chat``
        (one image at a time) and the engine (every admitted page at once) both call it.
        """
        if not pixels:  # a round of text-only requests: no vision forward at all
            return []
        dev = self.plora_glb_GN.device
        batches = [self.vit_input(p.to(dev)) for p in pixels]  # [1 + h*w, 3, t, t] each
        feats = self.vit(torch.cat(batches)) if len(batches) > 1 else self.vit(batches[0])
        proj_dtype = self.vision_proj[0].weight.dtype
        out: list[torch.Tensor] = []
        start = 0
        for p, b in zip(pixels, batches, strict=True):
            tokens = self.vision_tokens(feats[start : start + b.shape[0]], p)  # [N_i, 4C]
            start += b.shape[0]
            out.append(self.vision_proj(tokens.to(proj_dtype)))  # [N_i, D]
        return out

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[1, 3, H, W] normalized HD tensor -> image embeddings [N, D] after ``vision_proj``."""
        return self.encode_images([pixel_values])[0]

    def splice(
        self, parts: Sequence[Part], *, max_length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Parts (ids [n] long, or image embeddings [N, D]) -> embeds [1, L, D], im_mask [1, L].

        Text parts are embedded with ``tok_embeddings`` (im_mask False), image parts pass
        through unchanged (im_mask True). The result is cut to ``max_length`` (default
        ``config.max_length``), as upstream truncates the spliced embeddings.
        """
        emb = self.model.tok_embeddings.weight
        embeds: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for part in parts:
            if part.dtype in (torch.int32, torch.int64):
                e = self.embed_tokens(part.to(emb.device).reshape(-1))  # [n, D]
                masks.append(torch.zeros(e.shape[0], dtype=torch.bool, device=emb.device))
            else:
                e = part.to(device=emb.device, dtype=emb.dtype).reshape(-1, emb.shape[1])
                masks.append(torch.ones(e.shape[0], dtype=torch.bool, device=emb.device))
            embeds.append(e)
        limit = self.config.max_length if max_length is None else max_length
        x = torch.cat(embeds, dim=0)[:limit]  # [L, D]
        m = torch.cat(masks, dim=0)[:limit]  # [L]
        return x[None], m[None]
