"""Whether a target table someone created can take the source's rows unchanged.

COPY into a column of another type does not fail reliably: text lands in ``bytea`` as its bytes,
a ``bigint`` in binary form reads as a ``timestamp``, and a fingerprint of what landed can then
agree with itself. So every column's type is compared before anything is written. A widening
that keeps every value's text (``integer`` to ``bigint``, ``varchar(n)`` to ``text`` or to a
longer ``varchar``) is allowed when the user asks for it; the chunk is then copied as text and
verified on the values' text, so the cast values themselves are compared.
"""

from __future__ import annotations

import re
from dataclasses import replace

from sqlalchemy import Engine, text

from custody.errors import CustodyError
from custody.migration.catalog import TEXT_FORM, TableInfo

_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull AND a.atthasdef IS FALSE AND a.attidentity = '' AND a.attgenerated = ''
         AS needs_value
FROM pg_attribute a
WHERE a.attrelid = (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = :s AND c.relname = :t)
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_INTEGERS = ("smallint", "integer", "bigint")
_VARCHAR = re.compile(r"^character varying(?:\((\d+)\))?$")


class TargetTypeMismatchError(CustodyError):
    """A pre-created target column cannot hold the source's values exactly; nothing was written."""


def is_widening(source: str, target: str) -> bool:
    """``source`` values fit ``target`` and keep their text: int widths, longer varchar, text."""
    if source in _INTEGERS and target in _INTEGERS:
        return _INTEGERS.index(target) > _INTEGERS.index(source)
    src = _VARCHAR.match(source)
    if src is None:
        return False
    if target == "text":
        return True
    dst = _VARCHAR.match(target)
    if dst is None:
        return False
    if dst[1] is None:
        return True
    return src[1] is not None and int(dst[1]) >= int(src[1])


def check_target_columns(
    source: Engine, target: Engine, info: TableInfo, *, allow_widening: bool
) -> TableInfo:
    """Compare each column's type on both sides; refuse a difference naming both types.

    Returns ``info`` unchanged when every type is the same, or marked ``widened`` (copied and
    hashed as text) when the only differences are widenings the user allowed.

    Raises:
        TargetTypeMismatchError: A column is missing or of another type, or the target has a
            NOT NULL column without a default that the source does not fill.
    """
    params = {"s": info.schema, "t": info.name}
    with source.connect() as c:
        ours = {r.attname: r for r in c.execute(text(_COLUMNS), params)}
    with target.connect() as c:
        theirs = {r.attname: r for r in c.execute(text(_COLUMNS), params)}
    problems, widened = [], []
    for column in info.columns:
        mine, other = ours[column].type, theirs.get(column)
        where = f"table {info.schema}.{info.name} column {column}"
        if other is None:
            problems.append(f"{where}: missing on the target (source type {mine})")
        elif other.type == mine:
            continue
        elif allow_widening and is_widening(mine, other.type):
            widened.append(column)
        else:
            hint = (
                " (a widening: set allow_widening to accept it)"
                if is_widening(mine, other.type)
                else ""
            )
            problems.append(f"{where}: source type {mine}, target type {other.type}{hint}")
    for column, row in theirs.items():
        if column not in info.columns and row.needs_value:
            problems.append(
                f"table {info.schema}.{info.name} column {column}: NOT NULL on the target "
                "without a default, and the source has no such column"
            )
    if problems:
        raise TargetTypeMismatchError(
            "the target table's columns do not match the source; nothing was written: "
            + "; ".join(problems)
        )
    if not widened:
        return info
    # Each side's own binary forms differ (int4send vs int8send): widened columns are copied as
    # text and fingerprinted by their text, which a faithful cast keeps.
    forms = tuple(
        TEXT_FORM if column in widened else form
        for column, form in zip(info.hash_columns, info.canonical, strict=True)
    )
    return replace(
        info, binary_safe=False, hash_method="text", canonical=forms, widened=tuple(widened)
    )
