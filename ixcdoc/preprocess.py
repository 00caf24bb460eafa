"""PIL page + HD tier -> the image and the normalized pixel tensor the model sees.

Geometry comes from ``ixcdoc.tiling`` (one source of truth); this module only applies it.
Pixel-exact with upstream ``HD_transform`` + ``ToTensor`` + ``Normalize`` (CLIP mean/std):
torchvision's ``resize`` on a PIL image is ``PIL.Image.resize(..., BILINEAR)`` and its ``pad``
fills with the given colour, so Pillow alone reproduces it. No torchvision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image

from ixcdoc.tiling import REAL_TILE, TierGeometry, hd_geometry

if TYPE_CHECKING:
    import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WHITE = (255, 255, 255)


def geometry_for(img: Image.Image, hd: int, tile: int = REAL_TILE) -> TierGeometry:
    """Tier geometry for a PIL image (converts PIL's (W, H) to our (H, W))."""
    w, h = img.size
    return hd_geometry(h, w, hd, tile)


def hd_transform(img: Image.Image, hd: int, tile: int = REAL_TILE) -> Image.Image:
    """Upstream HD_transform: resize (bilinear) and pad white to a grid of ``tile`` crops."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    g = geometry_for(img, hd, tile)
    # Work in the landscape frame like upstream. Transposing is not optional: PIL resamples in
    # two passes (horizontal, then vertical) and rounds to uint8 in between, so resizing the
    # portrait original to the swapped size differs from upstream by 1 on some pixels.
    if g.transposed:
        img = img.transpose(Image.Transpose.TRANSPOSE)
        size, pad_top = (g.resized_h, g.resized_w), g.pad_left  # (W, H) of the landscape frame
        padded = (g.padded_h, g.padded_w)
    else:
        size, pad_top = (g.resized_w, g.resized_h), g.pad_top
        padded = (g.padded_w, g.padded_h)
    out = img.resize(size, Image.Resampling.BILINEAR)
    if padded != size:
        canvas = Image.new("RGB", padded, WHITE)
        canvas.paste(out, (0, pad_top))
        out = canvas
    return out.transpose(Image.Transpose.TRANSPOSE) if g.transposed else out


def normalize(img: Image.Image) -> torch.Tensor:
    """ToTensor + CLIP Normalize. img: RGB (W, H) -> Tensor [1, 3, H, W] float32."""
    import numpy as np
    import torch

    arr = np.asarray(img, dtype=np.uint8)  # [H, W, 3]
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div(255)  # [3, H, W]
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(mean).div_(std).unsqueeze(0)


def to_pixels(img: Image.Image, hd: int, tile: int = REAL_TILE) -> torch.Tensor:
    """HD transform then normalize: Tensor [1, 3, tile*rows, tile*cols] float32."""
    return normalize(hd_transform(img, hd, tile))


def global_view(pixels: torch.Tensor, tile: int = REAL_TILE) -> torch.Tensor:
    """The global view as upstream makes it: bicubic resize of the normalized HD tensor.

    pixels: [1, 3, H, W] -> [1, 3, tile, tile], computed in float32 (align_corners=False, no
    antialias) and cast back to the input dtype. The aspect ratio is not kept.
    """
    import torch.nn.functional as F

    out = F.interpolate(
        pixels.float(), size=(tile, tile), mode="bicubic", align_corners=False, antialias=False
    )
    return out.to(pixels.dtype)
