"""From one normalized HD tensor to the image-token sequence the decoder sees.

Steps (upstream 4KHD ``build_mlp.CLIPVisionTower.forward``):

1. ViT batch: [global view, crop(0,0), crop(0,1), ..., crop(h-1,w-1)] (row-major), one forward.
   The global view is a bicubic resize of the *normalized* HD tensor to one tile
   (align_corners False, no antialias), computed in fp32 and cast back.
2. 2x2 merge of each crop's g x g patch grid into (g/2) x (g/2) tokens of 4C channels, channel
   order top-left, top-right, bottom-left, bottom-right.
3. Layout: global (g/2 rows, each followed by ``plora_sub_GN``), one ``plora_glb_GN``, then the
   local crops as one big (g/2 * h) x (g/2 * w) grid in raster order, each row followed by
   ``plora_sub_GN``. The separators live in the pre-projection 4C space.
4. ``vision_proj``: Linear(4C -> D), exact-erf GELU, Linear(D -> D).

The emitted count is checked against ``ixcdoc.tiling.image_token_count``, the one source of
truth that preprocessing and planning also use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ixcdoc.errors import ModelError
from ixcdoc.tiling import image_token_count


def global_view(pixel_values: torch.Tensor, tile: int) -> torch.Tensor:
    """Bicubic squash of the whole HD tensor to one tile: [1, 3, H, W] -> [1, 3, tile, tile]."""
    # fp32 then cast back, as upstream does; bicubic on bf16 would round differently.
    out = F.interpolate(
        pixel_values.float(), size=(tile, tile), mode="bicubic", align_corners=False
    )
    return out.to(pixel_values.dtype)


def split_crops(pixel_values: torch.Tensor, tile: int) -> torch.Tensor:
    """Row-major tiles: [1, 3, h*tile, w*tile] -> [h*w, 3, tile, tile]."""
    _, c, hh, ww = pixel_values.shape
    h, w = hh // tile, ww // tile
    x = pixel_values.reshape(c, h, tile, w, tile)  # [3, h, t, w, t]
    x = x.permute(1, 3, 0, 2, 4)  # [h, w, 3, t, t]
    return x.reshape(h * w, c, tile, tile).contiguous()


def vit_batch(pixel_values: torch.Tensor, tile: int) -> torch.Tensor:
    """ViT input: [1, 3, H, W] -> [1 + h*w, 3, tile, tile] with the global view first."""
    if pixel_values.dim() != 4 or pixel_values.shape[0] != 1:
        raise ModelError(f"expected pixel values [1, 3, H, W], got {tuple(pixel_values.shape)}")
    _, _, hh, ww = pixel_values.shape
    if hh % tile or ww % tile:
        raise ModelError(f"HD image {hh}x{ww} (H x W) is not a multiple of the {tile}-px tile")
    return torch.cat([global_view(pixel_values, tile), split_crops(pixel_values, tile)], dim=0)


def merge_2x2(features: torch.Tensor) -> torch.Tensor:
    """2x2 token merge: [B, g*g, C] -> [B, g/2, g/2, 4C], channels TL, TR, BL, BR."""
    b, n, c = features.shape
    g = round(n**0.5)
    x = features.reshape(b, g // 2, 2, g // 2, 2, c)  # [B, i, dy, j, dx, C]
    x = x.permute(0, 1, 3, 2, 4, 5)  # [B, i, j, dy, dx, C]
    return x.reshape(b, g // 2, g // 2, 4 * c)  # channel block = 2*dy + dx


def _with_newlines(grid: torch.Tensor, sub_gn: torch.Tensor) -> torch.Tensor:
    """[R, Cols, 4C] -> [R * (Cols + 1), 4C]: ``sub_gn`` appended after every row."""
    r = grid.shape[0]
    nl = sub_gn.reshape(1, 1, -1).expand(r, 1, -1).to(grid.dtype)  # [R, 1, 4C]
    return torch.cat([grid, nl], dim=1).reshape(-1, grid.shape[-1])


def layout_tokens(
    merged: torch.Tensor, rows: int, cols: int, glb_gn: torch.Tensor, sub_gn: torch.Tensor
) -> torch.Tensor:
    """Place separators: merged [1 + h*w, m, m, 4C] -> [N, 4C] (global, glb_GN, local)."""
    _, m, _, c4 = merged.shape
    glb = _with_newlines(merged[0], sub_gn)  # [m*(m+1), 4C]; upstream uses sub_GN here too
    local = merged[1:].reshape(rows, cols, m, m, c4)  # [h, w, r, c, 4C]
    local = local.permute(0, 2, 1, 3, 4).reshape(rows * m, cols * m, c4)  # [h*m, w*m, 4C]
    local = _with_newlines(local, sub_gn)  # [h*m*(w*m+1), 4C]
    sep = glb_gn.reshape(1, c4).to(merged.dtype)  # [1, 4C]
    return torch.cat([glb, sep, local], dim=0)


def build_projector(in_dim: int, hidden: int, *, device=None, dtype=None) -> nn.Sequential:
    """``vision_proj``: Linear(in -> hidden), exact GELU, Linear(hidden -> hidden); keys 0 and 2."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden, device=device, dtype=dtype),
        nn.GELU(),
        nn.Linear(hidden, hidden, device=device, dtype=dtype),
    )


def check_token_count(n: int, rows: int, cols: int, tile: int, patch: int) -> None:
    """Raise ModelError if the merge emitted a count different from tiling's formula."""
    expected = image_token_count(rows, cols, tile=tile, patch=patch)
    if n != expected:
        raise ModelError(
            f"vision merge emitted {n} image tokens but tiling.image_token_count gives "
            f"{expected} for a {rows}x{cols} grid (tile {tile}, patch {patch})"
        )
