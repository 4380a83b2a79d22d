"""A MariaDB schema with every MySQL type family and the values migrations lose.

Zero and partial-zero dates, unsigned extremes, tinyint(1) holding 2, the invalid enum value '',
binary collations, tables without a primary key, 4-byte UTF-8, a 10 MB blob, Aria and MyISAM.
"""

from __future__ import annotations

from tests.support.mariadb import connect

BLOB_BYTES = 10 * 1024 * 1024

SCHEMA = [
    # Non-strict, as legacy applications ran: zero dates and invalid enum values get stored.
    "SET SESSION sql_mode = ''",
    """CREATE TABLE every_type (
      id int unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
      ti tinyint, tiu tinyint unsigned, si smallint, siu smallint unsigned,
      mi mediumint, miu mediumint unsigned, i int, iu int unsigned,
      bi bigint, biu bigint unsigned,
      flag tinyint(1) NOT NULL DEFAULT 1, flag2 tinyint(1),
      d decimal(20,6) DEFAULT '1.5', f float, db double, b bit(10), b64 bit(64),
      c char(5), vc varchar(50) DEFAULT 'it''s', vcb varchar(20) COLLATE utf8mb4_bin,
      tt tinytext, t text, mt mediumtext, lt longtext,
      bin binary(4), vb varbinary(10), bl blob, lb longblob,
      e enum('red','green') DEFAULT 'red', s set('a','b','c') DEFAULT 'a,b', y year,
      dd date, dt datetime(6), ts timestamp(3) NULL DEFAULT NULL, tm time, tmo time(3),
      dnn date NOT NULL DEFAULT '2000-01-01', created datetime DEFAULT current_timestamp(),
      j json, g point,
      KEY idx_vc (vc), UNIQUE KEY uq_c (c), KEY idx_prefix (t(10))
    ) ENGINE=InnoDB AUTO_INCREMENT=1000""",
    "CREATE TABLE no_key (a varchar(10), b int) ENGINE=InnoDB",
    "CREATE TABLE unique_key (code int NOT NULL, v text, UNIQUE KEY uq_code (code)) ENGINE=InnoDB",
    "CREATE TABLE legacy_aria (id int PRIMARY KEY, note varchar(20)) ENGINE=Aria",
    "CREATE TABLE legacy_myisam (id int PRIMARY KEY, note varchar(20)) ENGINE=MyISAM",
]

ROWS = [
    "SET SESSION sql_mode = ''",
    # Lower extremes; zero dates everywhere, NOT NULL one too; enum given an invalid value ('').
    "INSERT INTO every_type (id, ti, tiu, si, siu, mi, miu, i, iu, bi, biu, flag, flag2, d, f, db,"
    " b, b64, c, vc, vcb, tt, t, mt, lt, bin, vb, bl, lb, e, s, y, dd, dt, ts, tm, tmo, dnn, j)"
    " VALUES (1, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,"
    " 0, 2, -99999999999999.999999, -3.4e38, -1.7976931348623157e308, b'0', b'0',"
    " '', '', 'abc', '', '', '', '', X'00', X'', X'', X'', 'purple', '', 1901,"
    " '0000-00-00', '2019-00-00 00:00:00', '0000-00-00 00:00:00', '00:00:00', '-838:59:59',"
    " '0000-00-00', 'null')",
    # Upper extremes, 4-byte UTF-8, tinyint(1) holding 2 (in flag2), time beyond 24h.
    "INSERT INTO every_type (id, ti, tiu, si, siu, mi, miu, i, iu, bi, biu, flag, flag2, d, f, db,"
    " b, b64, c, vc, vcb, tt, t, mt, lt, bin, vb, bl, lb, e, s, y, dd, dt, ts, tm, tmo, dnn, j)"
    " VALUES (2, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295,"
    " 9223372036854775807, 18446744073709551615, 1, 1, 99999999999999.999999, 0.1, 0.1,"
    " b'1111111111', b'1111111111111111111111111111111111111111111111111111111111111111',"
    " 'abcde', '😀 naïve 𝄞 ✓', 'ABC', '中文', 'Ω', 'emoji 🧬', 'x', X'DEADBEEF', X'00FF',"
    " X'0102', X'FF', 'green', 'a,b,c', 2155, '9999-12-31', '9999-12-31 23:59:59.999999',"
    " '2038-01-19 03:14:07.999', '23:59:59', '838:59:59.000', '2019-05-00',"
    ' \'{"b": 1, "a": [1, 2.5, "😀"]}\')',
    # Ordinary values and NULLs; defaults fill the rest.
    "INSERT INTO every_type (id, flag, flag2, dd, dt, ts, tm, tmo, vcb, c) VALUES (3, 1, 0,"
    " '2024-02-29', '2024-02-29 12:34:56.123456', '2024-02-29 12:34:56.789', '12:00:00',"
    " '30:00:00', 'abc ', 'x')",
    f"UPDATE every_type SET lb = REPEAT(UNHEX('00FF7F80'), {BLOB_BYTES // 4}) WHERE id = 3",
    "UPDATE every_type SET g = ST_GeomFromText('POINT(1.5 -2)') WHERE id = 2",
    "INSERT INTO no_key VALUES ('a', 1), ('a', 1), (NULL, NULL), ('😀', 2)",
    "INSERT INTO unique_key VALUES (5, 'five'), (7, 'seven'), (9, NULL)",
    "INSERT INTO legacy_aria VALUES (1, 'aria'), (2, 'row')",
    "INSERT INTO legacy_myisam VALUES (1, 'myisam')",
]


def load_type_schema(url: str) -> None:
    """Create and fill the tables (about 1 s, most of it the 10 MB blob)."""
    with connect(url) as conn:
        cur = conn.cursor()
        for statement in [*SCHEMA, *ROWS]:
            cur.execute(statement)


def make_visits(url: str, rows: int) -> None:
    """A mixed-type table ``visits`` of ``rows`` rows, generated inside MariaDB."""
    with connect(url) as conn:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE visits (id int unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, "
            "patient varchar(40) NOT NULL, seen datetime(3), billed timestamp NULL, "
            "amount decimal(10,2), urgent tinyint(1) NOT NULL, note text, "
            "kind enum('inpatient','outpatient','emergency'), KEY idx_patient (patient))"
        )
        cur.execute(
            "INSERT INTO visits (id, patient, seen, billed, amount, urgent, note, kind) "
            "SELECT seq, CONCAT('patient-', seq MOD 9973), '2020-01-01' + INTERVAL seq MINUTE, "
            "'2021-01-01' + INTERVAL seq SECOND, (seq MOD 100000) / 100, seq MOD 2, "
            "IF(seq MOD 7 = 0, NULL, REPEAT('n', seq MOD 30)), "
            f"ELT(1 + seq MOD 3, 'inpatient', 'outpatient', 'emergency') FROM seq_1_to_{rows}"
        )
