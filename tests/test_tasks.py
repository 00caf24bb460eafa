"""Command-line numbers for planning: --vram and --aspect are finite, positive, one-line errors."""

from __future__ import annotations

import pytest

from ixcdoc.errors import UsageError
from ixcdoc.gpu import assumed_gpu
from ixcdoc.tasks import MAX_VRAM_GIB, check_vram_gib, parse_aspect


@pytest.mark.parametrize(
    ("text", "expect"), [("1:1", (1.0, 1.0)), ("8.5:11", (11.0, 8.5)), (" 16 : 9 ", (9.0, 16.0))]
)
def test_aspect_is_w_colon_h_returned_as_h_w(text: str, expect: tuple[float, float]) -> None:
    assert parse_aspect(text) == expect


@pytest.mark.parametrize(
    "text", ["nan:1", "inf:1", "1:-inf", "0:1", "-1:2", "1:1e400", "1", "1:2:3", "a:b", ""]
)
def test_bad_aspect_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match=r"^--aspect must be W:H with two finite numbers > 0"):
        parse_aspect(text)


@pytest.mark.parametrize(("value", "expect"), [(None, None), (24, 24.0), ("80", 80.0), (1, 1.0)])
def test_vram_passes_finite_sizes(value: float | str | None, expect: float | None) -> None:
    assert check_vram_gib(value) == expect


@pytest.mark.parametrize(
    "value", [float("inf"), float("nan"), float("1e400"), "1e400", 1e300, 0.5, 0, -4, "lots"]
)
def test_bad_vram_is_a_usage_error(value: float | str) -> None:
    with pytest.raises(UsageError, match=r"^--vram must be a number of GiB from 1 to 1,000,000"):
        check_vram_gib(value)


def test_the_largest_vram_accepted_still_plans() -> None:
    gpu = assumed_gpu(MAX_VRAM_GIB)  # the bound exists because 1e300 GiB overflows here
    assert gpu.total_bytes == int(MAX_VRAM_GIB) * 2**30
