"""Opening a local HTML file in Debian's headless Chromium, and reading back what happened.

Used by the report tests to prove a rendered page really displays (not just that its markup looks
right) and that opening it makes no network request and logs no console error.

* **Finding Chromium.** Debian's ``chromium`` package (``/usr/bin/chromium``). When it is missing
  the test fails at once with a message saying what to install (``infra/dev/bootstrap.sh``
  installs it when run as root): a skipped browser test would silently stop guarding the page.
* **Console errors.** ``--enable-logging=stderr --v=0`` makes Chromium copy every console message
  of the page to stderr as ``...:CONSOLE:<line>] "<message>", source: <url>`` (``CONSOLE(<line>)``
  in older builds). Content-Security-Policy violations are logged at *INFO* level, so we collect
  console lines of every level, plus ``Uncaught`` exceptions.
* **Network requests.** ``--log-net-log`` writes Chromium's own record of every URL request it
  starts. Requests the page makes carry the ``file://`` page in their network isolation key;
  Chromium's own background traffic (update checks, spell-check dictionaries) does not, so it is
  left out (and mostly switched off by flags anyway). ``--host-resolver-rules="MAP * ~NOTFOUND"``
  makes every host name unresolvable, so even a request that slipped past the log could not
  reach anything, and would show up as a failed load.
* **Not blank.** :func:`read_png` decodes the screenshot with the standard library only (PNG
  chunks, zlib, the five scanline filters) so tests can compare it pixel by pixel with a
  screenshot of an empty page, and count pixels of a known colour (the chart bars).
  ``--force-color-profile=srgb`` keeps colours exactly as the CSS says.
"""

from __future__ import annotations

import json
import operator
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
INSTALL_HINT = (
    "Debian's chromium package is not installed (no /usr/bin/chromium); the HTML report and UI "
    "tour tests need it. Install it with `apt-get install -y --no-install-recommends chromium` "
    "(as root), or run the tests with infra/dev/test as root, which does that."
)

# Headless, no GPU, fresh throw-away profile (added per run), no background networking, and no
# host name resolves, so a page that tried to fetch anything would fail visibly.
BASE_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--force-color-profile=srgb",
    "--force-device-scale-factor=1",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
)

_CONSOLE = re.compile(r":CONSOLE[:(]\d+\)?\]\s*(.*)")
_UNCAUGHT = re.compile(r"Uncaught\b.*")


def chromium() -> str:
    """The Chromium executable; fails the calling test at once when it is not installed."""
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if found is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return found


@dataclass
class PageRun:
    """What one headless Chromium run of a page left behind."""

    stdout: str
    stderr: str
    console: list[str] = field(default_factory=list)  # console messages and uncaught errors
    requests: list[str] = field(default_factory=list)  # URLs the page asked the network for

    def problems(self) -> list[str]:
        """Console messages and network requests, each prefixed; empty for a clean page."""
        return [f"console: {m}" for m in self.console] + [f"request: {u}" for u in self.requests]


def screenshot(
    html: Path, png: Path, *, width: int = 1200, height: int = 2000, timeout: float = 60
) -> PageRun:
    """Open ``html`` at ``width`` x ``height`` and save a PNG screenshot to ``png``."""
    run = _run(html, [f"--window-size={width},{height}", f"--screenshot={png}"], timeout)
    if not png.exists() or png.stat().st_size == 0:
        pytest.fail(f"chromium wrote no screenshot to {png}; stderr:\n{run.stderr[-4000:]}")
    return run


def dump_dom(html: Path, *, timeout: float = 60) -> PageRun:
    """Open ``html`` and return the DOM as Chromium parsed it (in ``stdout``)."""
    return _run(html, ["--dump-dom"], timeout)


def _run(html: Path, extra: list[str], timeout: float) -> PageRun:
    exe = chromium()
    with tempfile.TemporaryDirectory(prefix="custody-chromium-") as tmp:
        netlog = Path(tmp) / "netlog.json"
        args = [
            exe,
            *BASE_FLAGS,
            f"--user-data-dir={Path(tmp) / 'profile'}",
            f"--log-net-log={netlog}",
            *extra,
            html.resolve().as_uri(),
        ]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            pytest.fail(f"chromium exited {proc.returncode}; stderr:\n{proc.stderr[-4000:]}")
        requests = page_requests(netlog)
    console = [m.group(1) for m in map(_CONSOLE.search, proc.stderr.splitlines()) if m]
    console += [m.group(0) for m in map(_UNCAUGHT.search, proc.stderr.splitlines()) if m]
    return PageRun(proc.stdout, proc.stderr, console, requests)


def page_requests(netlog: Path) -> list[str]:
    """The URLs that a ``file://`` page asked the network stack for, from a NetLog file.

    Chromium's own background requests (updates, dictionaries) are left out: they are not tied to
    the page's ``file://`` network isolation key.
    """
    if not netlog.exists():
        pytest.fail(f"chromium wrote no net log at {netlog}")
    text = netlog.read_text(encoding="utf-8", errors="replace").rstrip()
    try:
        log: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError:  # a run cut short leaves the events list open
        log = json.loads(text.rstrip(",") + "]}")
    names = {code: name for name, code in log["constants"]["logEventTypes"].items()}
    urls: list[str] = []
    for event in log.get("events", []):
        params = event.get("params") or {}
        if names.get(event.get("type")) != "URL_REQUEST_START_JOB" or "url" not in params:
            continue
        if "file://" in str(params.get("network_isolation_key", "")):
            urls.append(str(params["url"]))
    return urls


# --------------------------------------------------------------------------------------------- PNG


@dataclass(frozen=True)
class Image:
    """A decoded 8-bit RGB(A) PNG: ``rows[y]`` holds ``width * channels`` bytes."""

    width: int
    height: int
    channels: int
    rows: list[bytes]

    def rgb(self, x: int, y: int) -> tuple[int, int, int]:
        """The colour of one pixel (alpha ignored)."""
        i = x * self.channels
        r, g, b = self.rows[y][i : i + 3]
        return r, g, b

    def colours(
        self, box: tuple[int, int, int, int] | None = None
    ) -> Counter[tuple[int, int, int]]:
        """How many pixels of each colour in ``box`` = (left, top, right, bottom), exclusive."""
        left, top, right, bottom = box or (0, 0, self.width, self.height)
        counts: Counter[tuple[int, int, int]] = Counter()
        c = self.channels
        for y in range(top, bottom):
            row = self.rows[y][left * c : right * c]
            counts.update(zip(row[0::c], row[1::c], row[2::c], strict=True))
        return counts

    def count_near(self, colour: tuple[int, int, int], tolerance: int = 3) -> int:
        """How many pixels are within ``tolerance`` per channel of ``colour``."""
        return sum(
            n
            for (r, g, b), n in self.colours().items()
            if max(abs(r - colour[0]), abs(g - colour[1]), abs(b - colour[2])) <= tolerance
        )

    def differing_pixels(self, other: Image) -> int:
        """How many pixels differ from ``other`` (same size required)."""
        assert (self.width, self.height) == (other.width, other.height), "sizes differ"
        c, d = self.channels, other.channels
        differ = 0
        for mine, theirs in zip(self.rows, other.rows, strict=True):
            if mine == theirs and c == d:
                continue
            a = zip(mine[0::c], mine[1::c], mine[2::c], strict=True)
            b = zip(theirs[0::d], theirs[1::d], theirs[2::d], strict=True)
            differ += sum(map(operator.ne, a, b))
        return differ


def read_png(data: bytes) -> Image:
    """Decode a non-interlaced 8-bit RGB or RGBA PNG (what Chromium writes) with the stdlib."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    channels = {2: 3, 6: 4}.get(colour_type)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour_type}, interlace")
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    rows: list[bytes] = []
    prior = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        line = raw[start + 1 : start + 1 + stride]
        prior = _unfilter(raw[start], line, prior, channels)
        rows.append(prior)
    return Image(width, height, channels, rows)


def _unfilter(kind: int, line: bytes, prior: bytes, bpp: int) -> bytes:
    """Undo one scanline's PNG filter (RFC 2083 section 6); C-speed for None, Sub and Up."""
    if kind == 0:
        return line
    if kind == 1:  # Sub: a running sum per channel, modulo 256
        out = bytearray(len(line))
        for c in range(bpp):
            out[c::bpp] = bytes(map((255).__and__, accumulate(line[c::bpp])))
        return bytes(out)
    if kind == 2:  # Up
        return bytes(map((255).__and__, map(operator.add, line, prior)))
    out = bytearray(line)
    if kind == 3:  # Average
        for i in range(len(out)):
            left = out[i - bpp] if i >= bpp else 0
            out[i] = (out[i] + ((left + prior[i]) >> 1)) & 255
        return bytes(out)
    if kind == 4:  # Paeth
        for i in range(len(out)):
            a = out[i - bpp] if i >= bpp else 0
            b = prior[i]
            c = prior[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out[i] = (out[i] + pred) & 255
        return bytes(out)
    raise ValueError(f"bad PNG filter type {kind}")


def blank_page(path: Path, background: str = "#fff") -> Path:
    """Write an empty page with background: the 'nothing drawn' screenshot baseline."""
    path.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<style>html, body {{ margin: 0; background: {background}; }}</style></head>"
        "<body></body></html>",
        encoding="utf-8",
    )
    return path


def summarise(lines: Iterable[str], limit: int = 20) -> str:
    """The first ``limit`` lines, for assertion messages."""
    items = list(lines)
    more = f"\n... and {len(items) - limit} more" if len(items) > limit else ""
    return "\n".join(items[:limit]) + more
