"""HD tier arithmetic: the single source of truth for geometry and token counts.

Pure integer/float arithmetic, no PIL and no torch. Sizes are (height, width) everywhere.

The geometry reproduces upstream ``HD_transform`` (IXC2-4KHD ``ixc_utils.py``) exactly:

1. if the image is portrait (w < h) work on its transpose, so that w >= h;
2. ratio = w / h; the largest ``scale`` with ``scale * ceil(scale / ratio) <= hd`` (loop up from 1);
3. resize to (new_h, new_w) = (int(scale * tile / ratio), scale * tile);
4. pad the height with white, centred, up to a multiple of ``tile``;
5. transpose back if step 1 transposed.

The token count generalises ``144 * (h * w + 1) + 12 * (h + 1) + 1`` (336-px tiles, 14-px
patches, 2x2 merge) to any tile and patch size: with g = tile / patch / 2 merged tokens per crop
side, N = g^2 (h w + 1) + g (h + 1) + 1, where h is the number of crop rows of the final image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ixcdoc.errors import UsageError

REAL_TILE = 336
REAL_PATCH = 14
MERGE = 2  # 2x2 token merge
# The tiers ``ixcdoc tiers`` lists; any N >= 1 is valid. ``doctor`` (and the README's table)
# show the ones people pick for documents.
TIER_LADDER = (1, 4, 9, 16, 25, 36, 45, 55, 65)
DOCUMENT_TIERS = (9, 16, 25, 36, 55, 65)


@dataclass(frozen=True)
class TierGeometry:
    """Where a page of size (src_h, src_w) goes at tier ``hd``. All sizes (height, width)."""

    hd: int
    tile: int
    src_h: int
    src_w: int
    transposed: bool
    scale: int
    resized_h: int  # after resize, before padding, in the final (un-transposed) orientation
    resized_w: int
    pad_top: int  # padding in the final orientation (left/right for portrait pages)
    pad_bottom: int
    pad_left: int
    pad_right: int

    @property
    def padded_h(self) -> int:
        return self.resized_h + self.pad_top + self.pad_bottom

    @property
    def padded_w(self) -> int:
        return self.resized_w + self.pad_left + self.pad_right

    @property
    def rows(self) -> int:
        """Crop rows of the final image (the ``h`` of the token formula)."""
        return self.padded_h // self.tile

    @property
    def cols(self) -> int:
        return self.padded_w // self.tile

    @property
    def crops(self) -> int:
        """Local crops (rows x cols); the vision tower also sees one global view."""
        return self.rows * self.cols

    @property
    def downscaled(self) -> bool:
        """True when the page is shrunk: fine detail of the native pixels is lost."""
        return self.resized_h < self.src_h or self.resized_w < self.src_w

    def image_tokens(self, patch: int = REAL_PATCH) -> int:
        return image_token_count(self.rows, self.cols, tile=self.tile, patch=patch)


def _check_size(h: int, w: int) -> None:
    if h < 1 or w < 1:
        raise UsageError(f"image size must be at least 1x1 pixels, got {w}x{h} (width x height)")


def check_hd(hd: int) -> int:
    """Validate a tier number (any N >= 1)."""
    if not isinstance(hd, int) or isinstance(hd, bool) or hd < 1:
        raise UsageError(f"HD tier must be a whole number >= 1, got {hd!r}")
    return hd


def _scale_for(ratio: float, hd: int) -> int:
    # Upstream loop, verbatim in meaning: grow while it fits, then step back once.
    scale = 1
    while scale * math.ceil(scale / ratio) <= hd:
        scale += 1
    return scale - 1


def hd_geometry(h: int, w: int, hd: int, tile: int = REAL_TILE) -> TierGeometry:
    """Geometry of upstream HD_transform for an (h, w) image at tier ``hd``."""
    _check_size(h, w)
    check_hd(hd)
    transposed = w < h
    lw, lh = (h, w) if transposed else (w, h)  # landscape frame: lw >= lh
    ratio = lw / lh
    scale = _scale_for(ratio, hd)
    new_w = scale * tile
    # int() truncates like upstream. Only a page thinner than 1/(scale*tile) of its length
    # would reach 0 rows; upstream crashes there, we keep one pixel row.
    new_h = max(1, int(new_w / ratio))
    target = math.ceil(new_h / tile) * tile
    top = (target - new_h) // 2
    bottom = target - new_h - top
    if transposed:
        return TierGeometry(hd, tile, h, w, True, scale, new_w, new_h, 0, 0, top, bottom)
    return TierGeometry(hd, tile, h, w, False, scale, new_h, new_w, top, bottom, 0, 0)


def merged_side(tile: int = REAL_TILE, patch: int = REAL_PATCH) -> int:
    """Merged tokens per crop side: 336 / 14 / 2 = 12 for the real model."""
    if tile % patch or (tile // patch) % MERGE:
        raise UsageError(f"tile {tile} must be a multiple of {MERGE} x patch size {patch}")
    return tile // patch // MERGE


def image_token_count(rows: int, cols: int, tile: int = REAL_TILE, patch: int = REAL_PATCH) -> int:
    """Image tokens the model sees for a rows x cols crop grid, separators included.

    Global view: g rows of g tokens, each row followed by a newline (g^2 + g); one global/local
    separator; local view: g*rows rows of g*cols tokens, each followed by a newline.
    """
    g = merged_side(tile, patch)
    return (g * g + g) + 1 + g * rows * (g * cols + 1)


def min_tier_for_native(h: int, w: int, tile: int = REAL_TILE) -> int:
    """Smallest tier at which HD_transform does not shrink an (h, w) page of ``tile``-px tiles.

    Scale must reach ceil(long side / tile); the tier that allows exactly that scale is
    scale * ceil(scale / ratio), one step more when int() truncation needs it.
    """
    _check_size(h, w)
    lw, lh = max(h, w), min(h, w)
    ratio = lw / lh
    scale = max(1, math.ceil(lw / tile))
    while True:
        hd = scale * math.ceil(scale / ratio)
        g = hd_geometry(h, w, hd, tile)
        if not g.downscaled:
            return hd
        scale += 1  # int() truncation of the short side can need one step more
