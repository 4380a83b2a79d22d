"""A lab-result table filled by the server: one row every 7 seconds from 2026-01-01 UTC."""

from __future__ import annotations

import psycopg

LAB_TABLE = """
CREATE TABLE lab_results (
    result_id bigint PRIMARY KEY, patient_id integer NOT NULL, loinc_code varchar(10) NOT NULL,
    value_numeric numeric(12,4), unit varchar(20) NOT NULL, abnormal_flag varchar(2),
    status text NOT NULL, note text, payload bytea, tags text[], extra jsonb,
    collected_at timestamptz NOT NULL, resulted_at timestamp)
"""
FILL = """
INSERT INTO lab_results SELECT g, (g % 50000) + 1,
  (ARRAY['2823-3','2951-2','2345-7','718-7','6690-2'])[g % 5 + 1],
  CASE WHEN g % 101 = 0 THEN NULL ELSE round((3 + (g % 400) / 100.0)::numeric, 4) END,
  'mmol/L', CASE WHEN g % 17 = 0 THEN 'H' WHEN g % 13 = 0 THEN '' END, 'final',
  CASE WHEN g % 7 = 0 THEN E'line one\\nline "two", ünïcödé ✓' END,
  CASE WHEN g % 11 = 0 THEN decode(md5(g::text), 'hex') END,
  CASE WHEN g % 3 = 0 THEN ARRAY['a', 'b,c', NULL] END,
  CASE WHEN g % 5 = 0 THEN jsonb_build_object('g', g, 'x', 'y') END,
  timestamptz '2026-01-01 00:00Z' + g * interval '7 seconds',
  timestamp '2026-01-01 02:00' + g * interval '7.123456 seconds'
FROM generate_series(1, {rows}) g
"""


def make_lab_results(url: str, rows: int) -> None:
    """Create and fill ``lab_results`` (awkward values on purpose: NULLs, quotes, unicode)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(LAB_TABLE)
        conn.execute(FILL.format(rows=int(rows)).encode())
        conn.execute("ANALYZE lab_results")


def eligible_before(rows: int, cutoff_epoch_s: int) -> int:
    """Generated rows with collected_at before a cutoff given in seconds after 2026-01-01."""
    return min(rows, (cutoff_epoch_s - 1) // 7)
