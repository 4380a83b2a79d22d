"""Render a ``Report`` as one CSV and as one self-contained HTML page.

Both writers stream: they call each table's ``rows()`` and write as they go, so a report over
millions of audit rows never sits in memory whole. The writers take a binary stream because the
destination is an object-store upload (or a temporary file), not a text console.

The HTML page is meant to be opened by an auditor on any machine, possibly offline and possibly
years later, and it holds PHI. So it is a single file that fetches nothing: inline CSS, charts as
inline SVG drawn here (no JavaScript, no fonts, no images, no URLs at all), and a strict
Content-Security-Policy so that even a value that slipped past escaping could not make the page
load anything or run a script. Only the standard library is used, so rendering has no
dependency that could change the output under us.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from decimal import Decimal
from html import escape
from typing import BinaryIO, TextIO

from custody.reports.model import Chart, Report, ReportTable

__all__ = ["CSP", "FORMULA_TRIGGERS", "neutralise_formula", "render", "write_csv", "write_html"]

#: The page may use its own inline styles and ``data:`` images (the favicon) and nothing else: no
#: scripts, no fetches, no frames, no external anything.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

# Chart geometry (SVG user units = CSS px at 100 %).
_CHART_WIDTH = 720
_CHART_HEIGHT = 260
_HBAR_ROW = 22  # minimum px per horizontal bar, so long top-N lists grow instead of squashing
_CHAR_WIDTH = 0.6  # average glyph width as a fraction of the font size (sans-serif)

# A calm palette; every text colour has at least 4.5:1 contrast on its background (WCAG AA).
_INK = "#1f2933"  # body text on white: 14.7:1
_MUTED = "#52606d"  # secondary text on white: 6.4:1
_BAR = "#3b6ea5"  # bars on white: 5.2:1 (non-text contrast needs 3:1)
_GRID = "#e4e7eb"
_AXIS = "#9aa5b1"
_FINDING_BG = "#fff4e5"
_FINDING_EDGE = "#b35c00"

_STYLE = f"""
:root {{ color-scheme: light; }}
* {{ box-sizing: border-box; }}
body {{ margin: 0; padding: 24px 32px 48px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI",
  Roboto, "Helvetica Neue", Arial, sans-serif; color: {_INK}; background: #fff; }}
header {{ border-bottom: 2px solid {_GRID}; margin-bottom: 20px; padding-bottom: 12px; }}
h1 {{ font-size: 24px; margin: 0 0 6px; }}
h2 {{ font-size: 18px; margin: 28px 0 10px; }}
.meta {{ color: {_MUTED}; margin: 2px 0; }}
dl.summary {{ display: grid; grid-template-columns: max-content 1fr; gap: 4px 20px; margin: 0; }}
dl.summary dt {{ color: {_MUTED}; }}
dl.summary dd {{ margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; }}
.findings {{ background: {_FINDING_BG}; border-left: 4px solid {_FINDING_EDGE};
  padding: 10px 16px; margin: 16px 0; }}
.findings h2 {{ margin-top: 4px; color: #7a3e00; }}
.findings li {{ margin: 4px 0; }}
.no-findings {{ color: {_MUTED}; }}
figure {{ margin: 16px 0 24px; }}
figcaption {{ font-weight: 600; margin-bottom: 6px; }}
svg {{ display: block; max-width: 100%; height: auto; }}
.table-note {{ color: {_MUTED}; margin: 0 0 8px; }}
.scroll {{ overflow-x: auto; max-width: 100%; }}
table {{ border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }}
th, td {{ border: 1px solid {_GRID}; padding: 3px 8px; text-align: left; vertical-align: top;
  white-space: pre-wrap; }}
th {{ background: #f5f7fa; position: sticky; top: 0; }}
td.num {{ text-align: right; }}
tbody tr:nth-child(even) td {{ background: #fafbfc; }}
.row-count {{ color: {_MUTED}; margin: 6px 0 0; }}
.truncated {{ font-weight: 600; color: #7a3e00; }}
@media print {{ body {{ padding: 0; }} th {{ position: static; }}
  .scroll {{ overflow: visible; }} }}
"""


# --------------------------------------------------------------------------------------------- CSV


def write_csv(report: Report, out: BinaryIO) -> None:
    """Write every table of ``report`` into one CSV, streaming the rows.

    Storage keeps one object per format, so all tables share one file in a *long* layout:
    every record starts with the name of the table it belongs to; the first record of each table
    is that table's header (its column names), the following records are its rows::

        access_log,ts,principal,action   <- header record of table "access_log"
        access_log,2024-05-01T10:00:00+00:00,dr.who,read
        top_principals,principal,accesses
        top_principals,dr.who,42

    So filtering on the first column gives one table with its own header on top. A table with no
    rows still gets its header record, so an empty table is visibly empty rather than missing.
    Records of different tables have different widths (the csv module reads that fine).

    Values: ``None`` is an empty field; datetimes, dates and times are ISO 8601 (offsets kept);
    ``Decimal`` is written as plain digits (no exponent) so no precision is lost to floats;
    everything else is ``str(value)``. The file is UTF-8 (no BOM) with RFC 4180 quoting and CRLF
    record ends.

    Text is neutralised against formula injection the way OWASP recommends: a field that is not
    a number and starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a
    single quote in front (``'=HYPERLINK(...)``), so a spreadsheet shows it as text and the
    original stays visible after the quote. Principals, workstations, break-the-glass reasons
    and disclosure texts come from applications and must never run when an auditor opens the
    file (issue 15 item 4). Numbers (negative ones included) are written as they are.

    Args:
        report: The report whose tables to write.
        out: A binary stream to write to; it is flushed, not closed.

    Raises:
        ValueError: If a row has a different number of values than its table has columns (the
            CSV would silently shift values into the wrong columns otherwise).
    """
    with _text(out) as text:
        writer = csv.writer(text, lineterminator="\r\n")
        for table in report.tables:
            writer.writerow([table.name, *map(neutralise_formula, table.columns)])
            for row in _checked_rows(table):
                writer.writerow([table.name, *(_csv_cell(v) for v in row)])


FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet treat a cell as a formula (OWASP, CSV injection)."""


def neutralise_formula(text: str) -> str:
    """``text`` with a leading single quote if a spreadsheet would run it as a formula."""
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def _csv_cell(value: object) -> str:
    if _is_number(value) or isinstance(value, bool):
        return _csv_value(value)  # a number is data, never a formula, even when negative
    return neutralise_formula(_csv_value(value))


def _csv_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


# -------------------------------------------------------------------------------------------- HTML


def write_html(report: Report, out: BinaryIO, *, max_rows: int = 10_000) -> None:
    """Write ``report`` as one self-contained HTML page, streaming the table rows.

    The page has a header (title, type, period, generation time), the summary as a definition
    list, the findings highlighted, every chart as inline SVG, then every table. A table with more
    than ``max_rows`` rows shows its first ``max_rows`` and says how many more are in the CSV:
    browsers choke on pages with millions of rows, and the CSV is the complete record anyway. The
    remaining rows are still streamed (not kept) to count them.

    Every value is HTML-escaped. The page carries a Content-Security-Policy meta tag
    (:data:`CSP`) and a ``data:`` favicon, so opening it makes no request of any kind.

    Args:
        report: The report to render.
        out: A binary stream to write UTF-8 HTML to; it is flushed, not closed.
        max_rows: How many rows of each table to show at most.

    Raises:
        ValueError: If ``max_rows`` is negative, or a row's length does not match its columns.
    """
    if max_rows < 0:
        raise ValueError("max_rows must be >= 0")
    with _text(out) as w:
        _write_head(w, report)
        w.write("<body>\n")
        _write_header(w, report)
        _write_findings(w, report.findings)
        if report.charts:
            w.write('<section class="charts">\n<h2>Charts</h2>\n')
            for chart in report.charts:
                w.write(f"<figure>\n<figcaption>{escape(chart.title)}</figcaption>\n")
                w.write(chart_svg(chart))
                w.write("\n</figure>\n")
            w.write("</section>\n")
        for table in report.tables:
            _write_table(w, table, max_rows)
        w.write("</body>\n</html>\n")


def render(report: Report, *, max_rows: int = 10_000) -> dict[str, bytes]:
    """Render ``report`` in memory as ``{"csv": ..., "html": ...}``.

    A convenience for small reports and tests; large reports should use :func:`write_csv` and
    :func:`write_html` with a file or upload stream so the rows are never held whole.
    """
    csv_out, html_out = io.BytesIO(), io.BytesIO()
    write_csv(report, csv_out)
    write_html(report, html_out, max_rows=max_rows)
    return {"csv": csv_out.getvalue(), "html": html_out.getvalue()}


def _write_head(w: TextIO, report: Report) -> None:
    # The CSP comes straight after the charset, before anything that could fetch.
    w.write(
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n'
        '<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{escape(CSP)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="robots" content="noindex, nofollow">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{escape(report.title)}</title>\n"
        f"<style>{_STYLE}</style>\n"
        "</head>\n"
    )


def _write_header(w: TextIO, report: Report) -> None:
    period = report.period
    w.write(
        "<header>\n"
        f"<h1>{escape(report.title)}</h1>\n"
        f'<p class="meta">Report type: {escape(str(report.type))}</p>\n'
        f'<p class="meta">Period: {escape(_utc(period.start))} to {escape(_utc(period.end))}'
        " (end exclusive)</p>\n"
        f'<p class="meta">Generated: {escape(_utc(report.generated_at))}</p>\n'
        "</header>\n"
    )
    if report.summary:
        w.write('<section>\n<h2>Summary</h2>\n<dl class="summary">\n')
        for key, value in report.summary.items():
            shown = "—" if value is None else _summary_value(value)
            w.write(f"<dt>{escape(str(key))}</dt><dd>{escape(shown)}</dd>\n")
        w.write("</dl>\n</section>\n")


def _write_findings(w: TextIO, findings: list[str]) -> None:
    if not findings:
        w.write('<p class="no-findings">No findings.</p>\n')
        return
    w.write(f'<section class="findings">\n<h2>Findings ({len(findings):,})</h2>\n<ul>\n')
    for finding in findings:
        w.write(f"<li>{escape(finding)}</li>\n")
    w.write("</ul>\n</section>\n")


def _write_table(w: TextIO, table: ReportTable, max_rows: int) -> None:
    w.write(f'<section>\n<h2 id="{escape(table.name)}">{escape(table.title)}</h2>\n')
    if table.note:
        w.write(f'<p class="table-note">{escape(table.note)}</p>\n')
    w.write('<div class="scroll">\n<table>\n<thead><tr>')
    w.write("".join(f"<th>{escape(c)}</th>" for c in table.columns))
    w.write("</tr></thead>\n<tbody>\n")
    total = 0
    for row in _checked_rows(table):
        total += 1
        if total <= max_rows:
            w.write("<tr>")
            for value in row:
                cls = ' class="num"' if _is_number(value) else ""
                w.write(f"<td{cls}>{escape(_html_value(value))}</td>")
            w.write("</tr>\n")
    if total == 0:
        w.write(f'<tr><td colspan="{max(len(table.columns), 1)}">No rows.</td></tr>\n')
    w.write("</tbody>\n</table>\n</div>\n")
    if total > max_rows:
        w.write(
            f'<p class="row-count">{total:,} rows; the first {max_rows:,} are shown. '
            f'<span class="truncated">{total - max_rows:,} more rows in the CSV.</span></p>\n'
        )
    else:
        w.write(f'<p class="row-count">{total:,} row{"" if total == 1 else "s"}.</p>\n')
    w.write("</section>\n")


def _html_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return _csv_value(value)


def _summary_value(value: object) -> str:
    # Headline counts read better grouped (25,000); table cells stay exact (ids, sequence numbers).
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return _html_value(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _utc(moment: datetime) -> str:
    if moment.tzinfo is None:  # generated_at should be aware; say so rather than guess
        return moment.isoformat(sep=" ", timespec="seconds") + " (no time zone)"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# ------------------------------------------------------------------------------------------ charts


def chart_svg(chart: Chart) -> str:
    """Draw one chart as an inline ``<svg>`` element (no ``xmlns``: the HTML parser adds it).

    ``"bar"`` draws vertical bars left to right, the label under each bar and the value on top
    (hours of the day, weekdays, buckets). ``"hbar"`` draws horizontal bars top to bottom with the
    labels on the left and values at the bar ends (top principals). ``x_label`` names the
    horizontal axis and ``y_label`` the vertical one, as seen on screen. Non-finite or negative
    values are drawn as empty bars but still labelled. A chart without points says "no data".

    Raises:
        ValueError: If ``chart.kind`` is neither ``"bar"`` nor ``"hbar"``.
    """
    if chart.kind not in ("bar", "hbar"):
        raise ValueError(f"unknown chart kind {chart.kind!r} (expected 'bar' or 'hbar')")
    if not chart.points:
        return _svg(
            _CHART_WIDTH,
            120,
            chart.title,
            f'<text x="{_CHART_WIDTH / 2}" y="64" text-anchor="middle" font-size="14" '
            f'fill="{_MUTED}">no data</text>',
        )
    if chart.kind == "bar":
        return _bar_svg(chart)
    return _hbar_svg(chart)


def _bar_svg(chart: Chart) -> str:
    width, height = _CHART_WIDTH, _CHART_HEIGHT
    left, right, top = 64, 16, 24
    bottom = 52 if chart.x_label else 32
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [_bar_value(v) for _, v in chart.points]
    ticks = _ticks(max(values))
    scale = plot_h / ticks[-1]
    band = plot_w / len(values)
    bar_w = max(band * 0.72, 1.0)
    base_y = top + plot_h

    parts = _value_grid_horizontal(ticks, left, width - right, base_y, scale)
    # Show every k-th label when they would overlap (e.g. 90 daily buckets).
    labels = [label for label, _ in chart.points]
    label_font = 11
    widest = max(_text_width(label, label_font) for label in labels)
    step = max(1, math.ceil((widest + 4) / band)) if widest > band - 2 else 1
    value_texts = [_compact(v) for _, v in chart.points]
    value_font = _fit_font(max(len(t) for t in value_texts), band - 2, 11)

    for i, ((label, raw), value) in enumerate(zip(chart.points, values, strict=True)):
        x = left + i * band + (band - bar_w) / 2
        h = value * scale
        cx = left + (i + 0.5) * band
        parts.append(
            f'<rect x="{x:.1f}" y="{base_y - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
            f'fill="{_BAR}"><title>{escape(label)}: {escape(_exact(raw))}</title></rect>'
        )
        if value_font:
            parts.append(
                f'<text x="{cx:.1f}" y="{base_y - h - 4:.1f}" text-anchor="middle" '
                f'font-size="{value_font}" fill="{_INK}">{escape(value_texts[i])}</text>'
            )
        if i % step == 0:
            shown = _truncate(label, step * band - 2, label_font)
            parts.append(
                f'<text x="{cx:.1f}" y="{base_y + 15}" text-anchor="middle" '
                f'font-size="{label_font}" fill="{_MUTED}">{escape(shown)}</text>'
            )
    parts.append(_line(left, base_y, width - right, base_y, _AXIS))
    if chart.x_label:
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle" '
            f'font-size="12" fill="{_INK}">{escape(chart.x_label)}</text>'
        )
    if chart.y_label:
        mid = top + plot_h / 2
        parts.append(
            f'<text x="14" y="{mid:.1f}" text-anchor="middle" font-size="12" fill="{_INK}" '
            f'transform="rotate(-90 14 {mid:.1f})">{escape(chart.y_label)}</text>'
        )
    return _svg(width, height, chart.title, "\n".join(parts))


def _hbar_svg(chart: Chart) -> str:
    n = len(chart.points)
    top = 28 if chart.y_label else 12
    bottom = 48 if chart.x_label else 30
    width = _CHART_WIDTH
    height = max(_CHART_HEIGHT, top + bottom + n * _HBAR_ROW)
    label_font = 12
    widest = max(_text_width(label, label_font) for label, _ in chart.points)
    left = int(min(max(widest + 16, 80), 240))
    value_font = 11
    value_texts = [_compact(v) for _, v in chart.points]
    right = int(max(_text_width(t, value_font) for t in value_texts) + 16)
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [_bar_value(v) for _, v in chart.points]
    ticks = _ticks(max(values))
    scale = plot_w / ticks[-1]
    band = plot_h / n
    bar_h = min(band * 0.72, 28.0)

    parts: list[str] = []
    for tick in ticks:
        x = left + tick * scale
        parts.append(_line(x, top, x, top + plot_h, _GRID))
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 15}" text-anchor="middle" font-size="10" '
            f'fill="{_MUTED}">{escape(_compact(tick))}</text>'
        )
    for i, ((label, raw), value) in enumerate(zip(chart.points, values, strict=True)):
        y = top + i * band + (band - bar_h) / 2
        cy = top + (i + 0.5) * band
        w = value * scale
        shown = _truncate(label, left - 12, label_font)
        parts.append(
            f'<text x="{left - 8}" y="{cy + 4:.1f}" text-anchor="end" font-size="{label_font}" '
            f'fill="{_INK}">{escape(shown)}<title>{escape(label)}</title></text>'
        )
        parts.append(
            f'<rect x="{left}" y="{y:.1f}" width="{w:.1f}" height="{bar_h:.1f}" fill="{_BAR}">'
            f"<title>{escape(label)}: {escape(_exact(raw))}</title></rect>"
        )
        parts.append(
            f'<text x="{left + w + 4:.1f}" y="{cy + 4:.1f}" font-size="{value_font}" '
            f'fill="{_INK}">{escape(value_texts[i])}</text>'
        )
    parts.append(_line(left, top, left, top + plot_h, _AXIS))
    if chart.x_label:
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle" '
            f'font-size="12" fill="{_INK}">{escape(chart.x_label)}</text>'
        )
    if chart.y_label:
        parts.append(
            f'<text x="{left - 8}" y="16" text-anchor="end" font-size="12" font-weight="600" '
            f'fill="{_INK}">{escape(chart.y_label)}</text>'
        )
    return _svg(width, height, chart.title, "\n".join(parts))


def _svg(width: int, height: int, title: str, body: str) -> str:
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" font-family="system-ui, sans-serif">'
        f"<title>{escape(title)}</title>\n{body}\n</svg>"
    )


def _value_grid_horizontal(
    ticks: list[float], x0: float, x1: float, base_y: float, scale: float
) -> list[str]:
    parts = []
    for tick in ticks:
        y = base_y - tick * scale
        parts.append(_line(x0, y, x1, y, _GRID))
        parts.append(
            f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10" '
            f'fill="{_MUTED}">{escape(_compact(tick))}</text>'
        )
    return parts


def _line(x1: float, y1: float, x2: float, y2: float, colour: str) -> str:
    return (
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
        f'stroke="{colour}" stroke-width="1"/>'
    )


def _bar_value(value: float) -> float:
    return value if math.isfinite(value) and value > 0 else 0.0


def _ticks(maximum: float) -> list[float]:
    """Round axis ticks from 0 to at least ``maximum`` in 1-2-5 steps, about five of them."""
    if maximum <= 0:
        return [0.0, 1.0]
    raw_step = maximum / 5
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw_step)
    count = math.ceil(maximum / step - 1e-9)
    return [i * step for i in range(count + 1)]


def _compact(value: float) -> str:
    """A short label for a value: 7, 0.25, 1.2k, 3.4M (the exact value is in the tooltip)."""
    if not math.isfinite(value):
        return "n/a"
    magnitude = abs(value)
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            return f"{value / limit:.3g}{suffix}"
    if value == int(value):
        return str(int(value))
    return f"{value:.3g}"


def _exact(value: float) -> str:
    if math.isfinite(value) and value == int(value):
        return f"{int(value):,}"
    return f"{value:,}"


def _text_width(text: str, font_size: float) -> float:
    return len(text) * font_size * _CHAR_WIDTH


def _fit_font(chars: int, room: float, largest: int) -> int:
    """The largest font size up to ``largest`` at which ``chars`` glyphs fit; 0 below 8 px."""
    size = min(largest, int(room / max(chars, 1) / _CHAR_WIDTH))
    return size if size >= 8 else 0


def _truncate(text: str, room: float, font_size: float) -> str:
    fits = int(room / (font_size * _CHAR_WIDTH))
    if len(text) <= fits:
        return text
    return text[: max(fits - 1, 1)] + "…"


# ---------------------------------------------------------------------------------------- plumbing


@contextmanager
def _text(out: BinaryIO) -> Iterator[TextIO]:
    """A UTF-8 text view of a binary stream that leaves the stream open afterwards.

    ``io.TextIOWrapper`` closes its buffer when it is closed or garbage collected; detaching
    instead hands the stream back to the caller (who may still need to seek, hash or upload it).
    """
    wrapper = io.TextIOWrapper(out, encoding="utf-8", newline="")
    try:
        yield wrapper
    finally:
        wrapper.flush()
        wrapper.detach()


def _checked_rows(table: ReportTable) -> Iterator[tuple[object, ...]]:
    width = len(table.columns)
    for number, row in enumerate(table.rows(), start=1):
        if len(row) != width:
            raise ValueError(
                f"table {table.name!r} row {number} has {len(row)} values for {width} columns"
            )
        yield row
