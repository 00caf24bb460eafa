"""--pages parsing (syntax -> UsageError) and selection (range -> InputError)."""

from __future__ import annotations

import pytest

from ixcdoc.errors import EXIT_USAGE, InputError, UsageError
from ixcdoc.inputs import parse_page_spec, select_pages


@pytest.mark.parametrize(
    ("spec", "ranges"),
    [
        ("1", [(1, 1)]),
        ("1,3-5", [(1, 1), (3, 5)]),
        (" 2 - 4 , 7- ", [(2, 4), (7, None)]),
        ("5,5", [(5, 5), (5, 5)]),
        ("10-10", [(10, 10)]),
    ],
)
def test_parse_page_spec(spec: str, ranges: list[tuple[int, int | None]]) -> None:
    assert parse_page_spec(spec) == ranges


@pytest.mark.parametrize("spec", ["", " ", "0", "a", "3-1", "1,,2", "-3", "1-2-3", "1.5", "1;2"])
def test_bad_syntax_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_page_spec(spec)
    assert info.value.exit_code == EXIT_USAGE
    assert "--pages" in info.value.message


def test_backwards_range_is_named() -> None:
    with pytest.raises(UsageError, match="3-1 runs backwards"):
        parse_page_spec("3-1")


@pytest.mark.parametrize(
    ("spec", "count", "pages"),
    [
        (None, 4, [1, 2, 3, 4]),
        ("1,3-5", 5, [1, 3, 4, 5]),
        ("5,1,1-2", 5, [1, 2, 5]),
        ("3-", 5, [3, 4, 5]),
        ("5-", 5, [5]),
        ("1", 1, [1]),
    ],
)
def test_select_pages(spec: str | None, count: int, pages: list[int]) -> None:
    assert select_pages(spec, count, source="a.pdf") == pages


@pytest.mark.parametrize(("spec", "wanted"), [("7", 7), ("3-10", 10), ("6-", 6), ("1,6", 6)])
def test_out_of_range_names_file_and_count(spec: str, wanted: int) -> None:
    with pytest.raises(InputError) as info:
        select_pages(spec, 5, source="scans/a.pdf")
    e = info.value
    assert e.code == "page_out_of_range"
    assert e.source == "scans/a.pdf"
    assert f"page {wanted}" in e.message
    assert "5 pages" in e.message


def test_select_rejects_bad_syntax_as_usage() -> None:
    with pytest.raises(UsageError):
        select_pages("x", 3, source="a.pdf")
