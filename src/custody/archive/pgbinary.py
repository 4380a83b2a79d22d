"""Arrow columns as PostgreSQL binary COPY rows, built column-wise by Arrow and NumPy.

The archive's read-back loads each object into a temporary table so that PostgreSQL parses
every value as the source held it. Binary COPY spares PostgreSQL the text parsers (numeric_in,
timestamptz_in: most of the load's cost) and this process the CSV writer. Only columns whose
Arrow form maps onto the PostgreSQL type's binary form one to one take this path
(``binary_copy_types``); any other table is loaded as CSV. A wrong encoding cannot pass
unnoticed: the loaded rows are fingerprinted by the server and compared with the source rows.
"""

from __future__ import annotations

import re
import struct
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from custody.archive.columns import ArchiveColumn

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
_PG_EPOCH_DAYS = 10_957  # 2000-01-01 - 1970-01-01
_PG_EPOCH_US = _PG_EPOCH_DAYS * 86_400 * 1_000_000

# PostgreSQL type (format_type) -> the Arrow type its binary form is encoded from.
_FIXED: dict[str, pa.DataType] = {
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "real": pa.float32(),
    "double precision": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp without time zone": pa.timestamp("us"),
    "timestamp with time zone": pa.timestamp("us", tz="UTC"),
}
_TEXT = re.compile(r"text|character varying(\(\d+\))?")
_NUMERIC = re.compile(r"numeric\((\d+),(\d+)\)")


def binary_copy_types(columns: list[ArchiveColumn], schema: pa.Schema) -> bool:
    """Whether every column of an object with ``schema`` has a binary encoding here."""
    if schema.names != [c.name for c in columns]:
        return False
    return all(_encodable(c.pg_type, t) for c, t in zip(columns, schema.types, strict=True))


def _encodable(pg_type: str, arrow: pa.DataType) -> bool:
    if pg_type in _FIXED:
        return bool(arrow == _FIXED[pg_type])
    if _TEXT.fullmatch(pg_type):
        return bool(arrow == pa.string())
    numeric = _NUMERIC.fullmatch(pg_type)
    if numeric:
        precision, scale = int(numeric[1]), int(numeric[2])
        padded = precision + (4 - scale % 4) % 4  # digits once the fraction fills its groups
        return padded <= 19 and arrow == pa.decimal128(precision, scale)  # fits a uint64
    return False


def encode_rows(batch: pa.RecordBatch, columns: list[ArchiveColumn]) -> memoryview:
    """The batch's rows in COPY binary's tuple format (no signature or trailer)."""
    if len(batch) == 0:
        return memoryview(b"")
    fields = [_field(batch.column(i), c.pg_type) for i, c in enumerate(columns)]
    count = pa.repeat(_binary_scalar(struct.pack(">h", len(columns))), len(batch))
    rows = pc.binary_join_element_wise(count, *fields, _binary_scalar(b""))
    offsets, data = rows.buffers()[1], rows.buffers()[2]
    assert offsets is not None and data is not None
    bounds = np.frombuffer(offsets, dtype=np.int32)
    return memoryview(data)[bounds[rows.offset] : bounds[rows.offset + len(rows)]]


def _field(array: pa.Array, pg_type: str) -> pa.Array:
    """Each value as ``int32 length + bytes``; NULL as length -1."""
    if pg_type in _FIXED or _NUMERIC.fullmatch(pg_type):
        payload = _fixed_payload(array, pg_type)
    else:
        payload = array.cast(pa.binary())
        offsets = payload.buffers()[1]
        assert offsets is not None
        bounds = np.frombuffer(offsets, dtype=np.int32)[
            array.offset : array.offset + len(array) + 1
        ]
        lengths = np.diff(bounds).astype(">i4")
        headers = _fixed_binary(lengths.tobytes(), 4, len(array)).cast(pa.binary())
        joined = pc.binary_join_element_wise(headers, payload, _binary_scalar(b""))
        if array.null_count == 0:
            return joined
        return pc.if_else(array.is_null(), _binary_scalar(b"\xff\xff\xff\xff"), joined)
    width = payload.type.byte_width
    with_header = pc.binary_join_element_wise(
        pa.repeat(_binary_scalar(struct.pack(">i", width)), len(array)),
        payload.cast(pa.binary()),
        _binary_scalar(b""),
    )
    if array.null_count == 0:
        return with_header
    return pc.if_else(array.is_null(), _binary_scalar(b"\xff\xff\xff\xff"), with_header)


def _fixed_payload(array: pa.Array, pg_type: str) -> pa.FixedSizeBinaryArray:
    """Fixed-width values, big-endian, read from the array's buffer (NULL slots: any bytes).

    Never ``fill_null(0)``: a Python scalar makes pyarrow import pandas (seconds, once).
    """
    rows = len(array)
    if pg_type == "boolean":
        bits = array.buffers()[1]
        assert bits is not None
        unpacked = np.unpackbits(np.frombuffer(bits, dtype=np.uint8), bitorder="little")
        values = unpacked[array.offset : array.offset + rows]
        return _fixed_binary(values.tobytes(), 1, rows)
    if pg_type == "date":
        days = _values(array, np.int32).astype(np.int64) - _PG_EPOCH_DAYS
        return _fixed_binary(days.astype(">i4").tobytes(), 4, rows)
    if pg_type.startswith("timestamp"):
        micros = _values(array, np.int64) - _PG_EPOCH_US
        return _fixed_binary(micros.astype(">i8").tobytes(), 8, rows)
    numeric = _NUMERIC.fullmatch(pg_type)
    if numeric:
        return _numeric_payload(array, int(numeric[1]), int(numeric[2]))
    native = np.dtype(array.type.to_pandas_dtype())
    values = _values(array, native)
    return _fixed_binary(values.astype(native.newbyteorder(">")).tobytes(), native.itemsize, rows)


def _values(array: pa.Array, dtype: type | np.dtype[Any]) -> np.ndarray[Any, Any]:
    data = array.buffers()[1]
    assert data is not None
    return np.frombuffer(data, dtype=dtype)[array.offset : array.offset + len(array)]


def _numeric_payload(array: pa.Array, precision: int, scale: int) -> pa.FixedSizeBinaryArray:
    """numeric_recv's form: ndigits, weight, sign, dscale, base-10000 digits (unstripped).

    PostgreSQL strips zero digit groups and applies the column's typmod on receipt, so every
    value can carry the same number of groups.
    """
    rows = len(array)
    raw = array.buffers()[1]
    assert raw is not None
    words = np.frombuffer(raw, dtype="<i8")[2 * array.offset : 2 * (array.offset + rows)]
    unscaled = words[0::2].copy()  # precision <= 18: the low word holds the whole value
    negative = unscaled < 0
    magnitude = np.abs(unscaled).astype(np.uint64)
    pad = (4 - scale % 4) % 4
    magnitude *= np.uint64(10**pad)  # fraction padded to whole groups of 4 digits
    fraction_groups = (scale + pad) // 4
    groups = (precision + pad + 3) // 4 + 1
    record = np.empty((rows, 4 + groups), dtype=">i2")  # one big-endian array: no promotion
    rest = magnitude
    for index in range(3 + groups, 3, -1):  # least significant group last
        record[:, index] = (rest % np.uint64(10_000)).astype(np.int16)
        rest = rest // np.uint64(10_000)
    record[:, 0] = groups
    record[:, 1] = groups - fraction_groups - 1
    record[:, 2] = np.where(negative, 0x4000, 0)
    record[:, 3] = scale
    return _fixed_binary(record.tobytes(), 2 * (4 + groups), rows)


def _fixed_binary(data: bytes, width: int, rows: int) -> pa.FixedSizeBinaryArray:
    array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), rows, [None, pa.py_buffer(data)])
    assert isinstance(array, pa.FixedSizeBinaryArray)
    return array


def _binary_scalar(data: bytes) -> pa.BinaryScalar:
    """A binary scalar from buffers (``pa.scalar`` on bytes would import pandas)."""
    offsets = pa.py_buffer(struct.pack("<ii", 0, len(data)))
    scalar = pa.BinaryArray.from_buffers(pa.binary(), 1, [None, offsets, pa.py_buffer(data)])[0]
    assert isinstance(scalar, pa.BinaryScalar)
    return scalar


def write_binary(
    conn: psycopg.Connection[Any],
    table: pa.Table,
    columns: list[ArchiveColumn],
    target: sql.Composable,
) -> None:
    """COPY ``table`` into ``target`` in binary, a slice of rows at a time.

    Call only when ``binary_copy_types`` holds for the table's schema.
    """
    copy_in = sql.SQL("COPY {t} ({cols}) FROM STDIN (FORMAT binary)").format(
        t=target, cols=sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    )
    with conn.cursor().copy(copy_in) as copy:
        copy.write(SIGNATURE)
        for batch in table.to_batches(max_chunksize=_WRITE_ROWS):
            copy.write(encode_rows(batch, columns))
        copy.write(TRAILER)


_WRITE_ROWS = 16_384
