"""Object keys and prefixes: hostile parts are refused before any request is made."""

from __future__ import annotations

import pytest

from custody.errors import InvalidIdentifierError
from custody.storage import check_key_part, check_prefix


@pytest.mark.parametrize(
    "bad",
    [
        "..",
        ".",
        "a/b",
        "a\\b",
        "%2e%2e",
        "a%2Fb",
        "/etc",
        "",
        "a b",
        "x" * 129,
        "a..b",
        "\uff4c\uff41\uff42",  # fullwidth look-alikes of "lab"
        "lab\n",  # a Python `$` alone would let a trailing newline through
    ],
)
def test_hostile_key_parts_are_refused(bad: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        check_key_part(bad, "table")


@pytest.mark.parametrize(
    "bad", ["/abs", "a//b", "a/../b", "a/", "a/%2e%2e/b", "a/./b", "a/b\n", "a\n/b"]
)
def test_hostile_prefixes_are_refused(bad: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        check_prefix(bad)


def test_plain_parts_pass_unchanged() -> None:
    assert check_key_part("lab_results-2026.v1", "table") == "lab_results-2026.v1"
    assert check_prefix("archive/hospital-a/2026") == "archive/hospital-a/2026"
    assert check_prefix("") == ""
