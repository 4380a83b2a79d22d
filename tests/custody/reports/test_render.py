"""Rendering reports: CSV round trip, self-contained and escaped HTML, and a real browser look.

The report is built by hand: 25,000 generated rows (streamed from a generator, never a list)
full of characters that break naive CSV and HTML writers, a small table, an empty table, and
bar / hbar / empty charts.
"""

from __future__ import annotations

import csv
import io
import os
import random
import re
import shutil
import struct
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest

from custody.reports.model import Chart, Period, Report, ReportTable, ReportType
from custody.reports.render import CSP, render, write_csv, write_html
from tests.support import chromium

# The module-scoped rendered report is made once: keep this module in one xdist worker.
pytestmark = pytest.mark.xdist_group("render")

N_ROWS = 25_000
MAX_ROWS = 10_000
START = datetime(2024, 5, 1, tzinfo=UTC)
NASTY = [
    "<script>alert(1)</script>",
    "Tom & Jerry",
    'she said "hi"',
    "it's",
    "a,b,c",
    "line one\nline two",
    "crlf\r\ninside",
    "Zoë Ålvarez — 患者 🩺",
    "",
    " padded ",
    "=SUM(A1:A2)",
    "https://example.com/should-be-text",
]
BAR_COLOUR = (0x3B, 0x6E, 0xA5)  # render._BAR


def access_row(i: int) -> tuple[object, ...]:
    return (
        i,
        START + timedelta(seconds=37 * i),
        f"user{i % 97}@clinic",
        NASTY[i % len(NASTY)],
        Decimal("12.50") * i if i % 5 else None,
        "read" if i % 3 else "export",
    )


ACCESS_COLUMNS = ["seq", "at", "principal", "detail", "amount", "action"]
TOP = [("dr.who@clinic", 1234), ("<b>nurse</b> & co", 880), ("a-very-long-principal-name" * 3, 17)]


class Rows:
    """A ``rows`` callable over a generator that records how far each call got."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0
        self.on_row: list[int] = []  # hook: sink sizes seen while producing rows (see tests)
        self.sink: CountingSink | None = None

    def __call__(self) -> Iterator[tuple[object, ...]]:
        self.calls += 1
        for i in range(self.n):
            if self.sink is not None and i % 1000 == 0:
                self.on_row.append(self.sink.bytes)
            yield access_row(i)


class CountingSink(io.BytesIO):
    """A binary stream that counts and discards what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def write(self, data: object) -> int:
        n = len(data)  # type: ignore[arg-type]
        self.bytes += n
        return n


def make_report(rows: Rows | None = None) -> Report:
    hours = [(f"{h:02d}", float((h * 37) % 11 * 100 + h)) for h in range(24)]
    weekdays = [
        (d, float(n))
        for d, n in zip(
            ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
            [1200, 1350, 990, 1500, 1100, 130, 90],
            strict=True,
        )
    ]
    return Report(
        type=ReportType.PHI_ACCESS,
        title="PHI access <May 2024> & co",
        period=Period(START, START + timedelta(days=31)),
        generated_at=datetime(2024, 6, 1, 2, 3, 4, tzinfo=UTC),
        summary={
            "accesses": N_ROWS,
            "principals": 97,
            "exports": Decimal("8333"),
            "note": None,
            "<b>bold key</b>": "x & y",
        },
        tables=[
            ReportTable(
                "access_log",
                "Access log",
                ACCESS_COLUMNS,
                rows or Rows(N_ROWS),
                note="Every read & export, oldest first.",
            ),
            ReportTable(
                "top_principals", "Top principals", ["principal", "accesses"], lambda: iter(TOP)
            ),
            ReportTable("empty", "Nothing here", ["a", "b"], lambda: iter(())),
        ],
        charts=[
            Chart("Accesses by hour", "bar", hours, x_label="hour (UTC)", y_label="accesses"),
            Chart("Accesses by weekday", "bar", weekdays, x_label="weekday", y_label="accesses"),
            Chart(
                "Top principals",
                "hbar",
                [(p, float(n)) for p, n in TOP],
                x_label="accesses",
                y_label="principal",
            ),
            Chart("Denied accesses", "bar", [], x_label="hour"),
        ],
        findings=["row seq 1234 fails its HMAC <script>alert(2)</script>", "2 gaps in seq"],
    )


@pytest.fixture(scope="module")
def report() -> Report:
    return make_report()


@pytest.fixture(scope="module")
def html(report: Report) -> str:
    out = io.BytesIO()
    write_html(report, out, max_rows=MAX_ROWS)
    return out.getvalue().decode("utf-8")


def as_csv_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value  # formula neutralised, original kept (issue 15 item 4)
    return str(value)


# --------------------------------------------------------------------------------------------- CSV


def test_csv_round_trips_every_row_in_the_long_layout(report: Report) -> None:
    out = io.BytesIO()
    write_csv(report, out)
    data = out.getvalue()
    assert not data.startswith(b"\xef\xbb\xbf"), "plain UTF-8, no BOM"
    records = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))

    expected: list[list[str]] = [["access_log", *ACCESS_COLUMNS]]
    expected += [["access_log", *map(as_csv_text, access_row(i))] for i in range(N_ROWS)]
    expected += [["top_principals", "principal", "accesses"]]
    expected += [["top_principals", p, str(n)] for p, n in TOP]
    expected += [["empty", "a", "b"]]
    assert len(records) == len(expected)
    assert records == expected
    # Spot-check the formats the docstring promises.
    assert records[2][2] == "2024-05-01T00:00:37+00:00"
    assert records[2][5] == "12.50"
    assert records[1][5] == ""  # None


def test_csv_decimals_are_plain_digits() -> None:
    table = ReportTable("t", "T", ["d"], lambda: iter([(Decimal("1E+3"),), (Decimal("0.000001"),)]))
    report = make_report()
    report.tables = [table]
    assert render(report)["csv"] == b"t,d\r\nt,1000\r\nt,0.000001\r\n"


def test_writers_stream_rows_and_leave_the_stream_open() -> None:
    # Output reaches the sink while rows are still being produced, and the sink stays usable.
    for writer in (write_csv, write_html):
        rows = Rows(N_ROWS)
        rows.sink = CountingSink()
        writer(make_report(rows), rows.sink)
        assert rows.calls == 1
        assert not rows.sink.closed
        midway = rows.on_row[len(rows.on_row) // 2]
        assert 0 < midway < rows.sink.bytes, f"{writer.__name__} buffered everything"


def test_rows_of_the_wrong_width_are_refused() -> None:
    report = make_report()
    report.tables = [ReportTable("t", "T", ["a", "b"], lambda: iter([(1, 2), (3,)]))]
    with pytest.raises(ValueError, match=r"'t' row 2 has 1 values for 2 columns"):
        write_csv(report, io.BytesIO())
    with pytest.raises(ValueError, match="row 2"):
        write_html(report, io.BytesIO())


# -------------------------------------------------------------------------------------------- HTML


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parse(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(html)
    parser.close()
    return parser.tags


def test_html_is_self_contained(html: str) -> None:
    assert "http://" not in html.lower().replace("https://example.com/should-be-text", "")
    assert "https://" not in html.lower().replace("https://example.com/should-be-text", "")
    tags = parse(html)
    names = [t for t, _ in tags]
    for forbidden in ("script", "iframe", "object", "embed", "img", "base", "form"):
        assert forbidden not in names
    for tag, attrs in tags:
        for attr in ("src", "href", "srcset", "action", "xlink:href", "data"):
            value = attrs.get(attr)
            assert value is None or value.startswith("data:"), f"<{tag} {attr}={value!r}>"
    assert "url(" not in html and "@import" not in html
    assert not re.search(r"\son\w+\s*=", html), "no event handler attributes"
    metas = [a for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert metas == [{"http-equiv": "Content-Security-Policy", "content": CSP}]
    assert CSP == "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    assert names.index("meta") < names.index("style"), "CSP before anything else"
    assert ("link", {"rel": "icon", "href": "data:,"}) in tags


def test_html_escapes_every_value(html: str) -> None:
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # table value
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html  # finding
    assert "<b>" not in html  # summary key, table value, chart label
    assert "&lt;b&gt;bold key&lt;/b&gt;" in html
    assert "Tom &amp; Jerry" in html and "she said &quot;hi&quot;" in html
    assert "Zoë Ålvarez — 患者 🩺" in html
    assert "<title>PHI access &lt;May 2024&gt; &amp; co</title>" in html


def test_html_shows_header_summary_findings_and_truncates_long_tables(html: str) -> None:
    assert "2024-05-01 00:00:00 UTC" in html and "2024-06-01 00:00:00 UTC" in html
    assert "<dt>accesses</dt><dd>25,000</dd>" in html
    assert '<section class="findings">' in html and "Findings (2)" in html
    assert "25,000 rows; the first 10,000 are shown." in html
    assert "15,000 more rows in the CSV." in html
    access = html.split('<h2 id="access_log">')[1].split("</section>")[0]
    assert access.count("<tr>") == MAX_ROWS + 1  # header + shown rows
    assert ">9999</td>" in access and ">10000</td>" not in access
    assert "3 rows." in html and "No rows." in html


def test_html_draws_one_svg_per_chart(html: str, report: Report) -> None:
    assert html.count("<svg") == len(report.charts) == 4
    assert "xmlns" not in html  # inline SVG needs no namespace URL
    assert ">no data</text>" in html
    bar_svg = html.split("<svg")[1]
    assert bar_svg.count("<rect") == 24
    for hour in ("00", "12", "23"):
        assert f">{hour}</text>" in bar_svg
    hbar_svg = html.split("<svg")[3]
    assert hbar_svg.count("<rect") == 3
    assert ">1.23k</text>" in hbar_svg and "dr.who@clinic: 1,234" in hbar_svg
    assert "…" in hbar_svg  # the long principal is cut to fit, in full in its tooltip


def test_render_returns_both_formats(report: Report) -> None:
    small = make_report(Rows(5))
    both = render(small)
    assert set(both) == {"csv", "html"}
    assert both["csv"].startswith(b"access_log,seq,at,")
    assert both["html"].startswith(b"<!DOCTYPE html>")
    with pytest.raises(ValueError, match="max_rows"):
        write_html(small, io.BytesIO(), max_rows=-1)
    with pytest.raises(ValueError, match="chart kind"):
        render(
            Report(
                ReportType.DISCLOSURES,
                "t",
                report.period,
                report.generated_at,
                charts=[Chart("pie", "pie", [("a", 1.0)])],
            )
        )


# ----------------------------------------------------------------------------------------- browser


def encode_png(rows: list[bytes], width: int, bpp: int) -> bytes:
    """A PNG using every filter type in turn (a reference encoder for the test decoder)."""

    def paeth(a: int, b: int, c: int) -> int:
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        return a if pa <= pb and pa <= pc else (b if pb <= pc else c)

    raw = bytearray()
    prior = bytes(width * bpp)
    for y, row in enumerate(rows):
        kind = y % 5
        raw.append(kind)
        for i, x in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b, c = prior[i], (prior[i - bpp] if i >= bpp else 0)
            pred = [0, a, b, (a + b) >> 1, paeth(a, b, c)][kind]
            raw.append((x - pred) & 255)
        prior = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, len(rows), 8, 6 if bpp == 4 else 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(raw)))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("bpp", [3, 4])
def test_png_decoder_undoes_every_filter(bpp: int) -> None:
    rng = random.Random(bpp)
    width = 17
    rows = [bytes(rng.randrange(256) for _ in range(width * bpp)) for _ in range(12)]
    image = chromium.read_png(encode_png(rows, width, bpp))
    assert (image.width, image.height, image.channels) == (width, 12, bpp)
    assert image.rows == rows


def test_browser_checks_catch_requests_and_console_errors(tmp_path: Path) -> None:
    # The detectors must fire on a page that misbehaves, or a clean result proves nothing.
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
        '<img src="https://example.com/pixel.png"><script>console.error("boom")</script>'
        "</body></html>",
        encoding="utf-8",
    )
    run = chromium.dump_dom(page)
    assert any(u.startswith("https://example.com/pixel.png") for u in run.requests), run.requests
    assert any("boom" in m for m in run.console), run.console

    # With the report's CSP the same fetch never leaves the page, and the violation is logged.
    page.write_text(
        f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<link rel="icon" href="data:,"></head><body><img src="https://example.com/pixel.png">'
        "</body></html>",
        encoding="utf-8",
    )
    run = chromium.dump_dom(page)
    assert run.requests == []
    assert any("Content Security Policy" in m for m in run.console), run.console


@pytest.mark.slow
def test_report_renders_in_chromium_without_requests_or_errors(
    tmp_path: Path, html: str, report: Report
) -> None:
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")

    dom = chromium.dump_dom(page)
    assert dom.problems() == [], chromium.summarise(dom.problems())
    assert "PHI access &lt;May 2024&gt; &amp; co" in dom.stdout
    assert dom.stdout.count("<svg") == len(report.charts)
    assert "<script" not in dom.stdout
    assert "15,000 more rows in the CSV." in dom.stdout

    shot = tmp_path / "report.png"
    run = chromium.screenshot(page, shot)
    assert run.problems() == [], chromium.summarise(run.problems())
    empty = tmp_path / "empty.png"
    chromium.screenshot(chromium.blank_page(tmp_path / "empty.html"), empty)

    image = chromium.read_png(shot.read_bytes())
    baseline = chromium.read_png(empty.read_bytes())
    assert (image.width, image.height) == (baseline.width, baseline.height) == (1200, 2000)
    assert len(baseline.colours()) == 1, "the empty page is one flat colour"
    differ = image.differing_pixels(baseline)
    assert differ > 0.03 * image.width * image.height, f"only {differ} pixels drawn"
    assert len(image.colours()) > 50, "text and charts give many distinct colours"
    # The bars are solid rectangles of one colour: thousands of exactly-coloured pixels.
    assert image.count_near(BAR_COLOUR) > 5_000
    if keep := os.environ.get("KEEP_REPORT_SCREENSHOT"):  # to look at it by eye
        shutil.copy(shot, keep)
