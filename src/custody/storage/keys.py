"""Object keys built only from checked parts, so no parameter can climb out of its prefix."""

from __future__ import annotations

import re

from custody.errors import InvalidIdentifierError

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_key_part(part: str, what: str) -> str:
    """One path segment: letters, digits, ``.``, ``_``, ``-``; not ``.``/``..``; no separators.

    Raises:
        InvalidIdentifierError: the part could escape its prefix or is not plain ASCII.
    """
    if not _PART.fullmatch(part) or part in (".", "..") or ".." in part:
        raise InvalidIdentifierError(
            f"{what} {part!r} is not a plain object-key segment (ASCII letters, digits, '.', "
            "'_', '-'; no '..', slashes or encoded separators)"
        )
    return part


def check_prefix(prefix: str) -> str:
    """A prefix of checked segments joined by ``/`` (empty is allowed); no leading slash."""
    if prefix == "":
        return ""
    if prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        raise InvalidIdentifierError(
            f"prefix {prefix!r} must be relative segments joined by '/', without leading, "
            "trailing or doubled slashes"
        )
    return "/".join(check_key_part(p, "prefix segment") for p in prefix.split("/"))


def join_key(*parts: str) -> str:
    """Join checked parts (a prefix may hold several segments)."""
    return "/".join(p for p in parts if p)
