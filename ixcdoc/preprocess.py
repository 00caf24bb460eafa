"""PIL page + HD tier -> the image and the normalized pixel tensor the model sees.

Geometry comes from ``ixcdoc.tiling`` (one source of truth); this module only applies it.
Pixel-exact with upstream ``HD_transform`` + ``ToTensor`` + ``Normalize`` (CLIP mean/std):
torchvision's ``resize`` on a PIL image is ``PIL.Image.resize(..., BILINEAR)`` and its ``pad``
fills with the given colour, so Pillow alone reproduces it. No torchvision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from ixcdoc.tiling import REAL_TILE, TierGeometry, hd_geometry

if TYPE_CHECKING:
    import numpy as np
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
    w, h = img.size
    if g.transposed and (w, h) != (g.resized_w, g.resized_h):
        # Upstream transposes a portrait page, resizes, and transposes back. PIL resamples in
        # two passes, horizontal then vertical, rounding to uint8 in between, so the order of
        # the passes matters (one grey level on some pixels). In the transposed frame the
        # horizontal pass runs along our height: do the vertical pass first, then the
        # horizontal one, each as a single-axis resize. Same pixels, no transposes.
        out = img.resize((w, g.resized_h), Image.Resampling.BILINEAR)
        out = out.resize((g.resized_w, g.resized_h), Image.Resampling.BILINEAR)
    else:
        out = img.resize((g.resized_w, g.resized_h), Image.Resampling.BILINEAR)
    if (g.padded_h, g.padded_w) != (g.resized_h, g.resized_w):
        canvas = Image.new("RGB", (g.padded_w, g.padded_h), WHITE)
        canvas.paste(out, (g.pad_left, g.pad_top))
        out = canvas
    return out


@dataclass(frozen=True)
class HDImage:
    """A page already HD-transformed for one tier: made ahead on a worker thread or process.

    ``source`` is the page at native resolution (kept for a retry at another tier),
    ``image`` is ``hd_transform(source, hd, tile)``. A page rendered straight at the tier's
    size (``ixcdoc.feeder``) has no native image: ``source`` is None, ``image`` is the padded
    uint8 array [H, W, 3], ``native`` its native PIL (W, H) and ``redo(hd, tile)`` renders
    it again for another tier.
    """

    source: Image.Image | None
    image: Image.Image | np.ndarray
    hd: int
    tile: int
    native: tuple[int, int] | None = None
    redo: Callable[[int, int], Image.Image | np.ndarray] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """PIL's (W, H) of the native page, like ``Image.size``."""
        if self.source is not None:
            return self.source.size
        assert self.native is not None, "an HDImage without a source needs its native size"
        return self.native

    def at(self, hd: int, tile: int) -> Image.Image | np.ndarray:
        """The HD image for (hd, tile): the prepared one, or a fresh transform (or render)."""
        if (hd, tile) == (self.hd, self.tile):
            return self.image
        if self.source is not None:
            return hd_transform(self.source, hd, tile)
        if self.redo is None:
            raise ValueError(f"this page was prepared for HD{self.hd} only, not HD{hd}")
        return self.redo(hd, tile)


def hd_image(img: Image.Image, hd: int, tile: int = REAL_TILE) -> HDImage:
    """Transform ``img`` for tier ``hd`` now, keeping the native page for other tiers."""
    return HDImage(img, hd_transform(img, hd, tile), hd, tile)


def normalize(img: Image.Image) -> torch.Tensor:
    """ToTensor + CLIP Normalize. img: RGB (W, H) -> Tensor [1, 3, H, W] float32."""
    return normalize_uint8(hwc_uint8(img))


def hwc_uint8(img: Image.Image | np.ndarray) -> torch.Tensor:
    """RGB PIL image (or uint8 array [H, W, 3]) -> uint8 Tensor [H, W, 3] over its bytes."""
    import warnings

    import numpy as np
    import torch

    arr = np.asarray(img, dtype=np.uint8)  # [H, W, 3]
    with warnings.catch_warnings():
        # PIL's array view is read-only; nothing writes to this tensor.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def normalize_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 [H, W, 3] on any device -> float32 [1, 3, H, W]: the exact ToTensor + Normalize ops.

    Run it on the GPU: 4x fewer bytes cross PCIe and the channel transpose costs nothing
    there; the float32 ops are the same, so are the values.
    """
    import torch

    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=x.device).view(3, 1, 1)
    chw = x.permute(2, 0, 1).contiguous()  # [3, H, W] uint8
    return chw.to(torch.float32).div_(255).sub_(mean).div_(std).unsqueeze(0)


def to_pixels(img: Image.Image, hd: int, tile: int = REAL_TILE) -> torch.Tensor:
    """HD transform then normalize: Tensor [1, 3, tile*rows, tile*cols] float32."""
    return normalize(hd_transform(img, hd, tile))
