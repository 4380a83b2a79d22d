"""Where lab files may be read from, and how they are named outside custody's store.

Issue 15 item 5: an inbox file named after a patient (``DOE_JANE_MRN0099123_potassium.hl7``)
reached a Prefect artifact, a symlink in the inbox led to a file outside it, and ``source``
accepted any absolute path. So:

* a local ``source`` must resolve inside one of the configured inbox roots
  (``CUSTODY_LAB_INBOX_ROOTS``; default ``<work_dir>/inbox``);
* a symlink (to a file or a directory, anywhere under the root) is never followed: it is
  refused and quarantined with a reason;
* outside custody's store (artifacts, events, task results, errors) a file is named by its
  sequence number in the run and its content digest, never by its name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from custody.errors import CustodyError


class LabSourceError(CustodyError):
    """The source names nothing that can be read; nothing was ingested."""


class SymlinkRefusedError(CustodyError):
    """An inbox entry is a symlink, or sits under one: custody does not follow it."""


SYMLINK_REASON = "symlink refused: inbox entries must be regular files inside the inbox root"


def inbox_roots(configured: list[Path], work_dir: Path) -> list[Path]:
    """The configured inbox roots, resolved; by default ``<work_dir>/inbox``."""
    return [Path(os.path.realpath(r)) for r in (configured or [work_dir / "inbox"])]


def check_local_source(source: str, roots: list[Path]) -> Path:
    """The source as a path inside an inbox root, resolved; else ``LabSourceError``.

    The message neither quotes the path nor tells whether it exists: whoever can set the
    parameter learns only that it is not an allowed inbox.
    """
    real = Path(os.path.realpath(source))
    if any(real == root or root in real.parents for root in roots) and real.exists():
        return real
    raise LabSourceError(
        "source is not an existing path inside a configured inbox root "
        "(CUSTODY_LAB_INBOX_ROOTS): choose an inbox directory or store:<prefix>"
    )


def list_inbox(root: Path) -> list[str]:
    """Every entry under ``root`` as a relative path, symlinks included (to be refused)."""
    if root.is_file():
        return [root.name]
    found: list[str] = []
    for directory, dirs, files in os.walk(root, followlinks=False):
        here = Path(directory)
        for name in dirs:  # a linked directory is listed, not entered (os.walk's default)
            if (here / name).is_symlink() and not name.startswith("."):
                found.append(str((here / name).relative_to(root)))
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(str((here / f).relative_to(root)) for f in files if not f.startswith("."))
    return sorted(found)


def inbox_path(root: Path, ref: str) -> Path:
    """The path of a regular file under ``root``; ``SymlinkRefusedError`` for a link."""
    path = root if root.is_file() else root / ref
    if os.path.realpath(path) != os.path.abspath(path) or path.is_symlink():
        raise SymlinkRefusedError(SYMLINK_REASON)
    return path


def read_inbox_file(root: Path, ref: str) -> bytes:
    """The bytes of a regular file under ``root``; ``SymlinkRefusedError`` for a link.

    Checked on the resolved path (no component may be a link) and opened with O_NOFOLLOW,
    so a link swapped in between the check and the open is refused too.
    """
    path = root if root.is_file() else root / ref
    if os.path.realpath(path) != os.path.abspath(path):
        raise SymlinkRefusedError(SYMLINK_REASON)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if path.is_symlink():
            raise SymlinkRefusedError(SYMLINK_REASON) from None
        raise LabSourceError(f"inbox file could not be read ({type(exc).__name__})") from None
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def name_digest(ref: str) -> str:
    """A stand-in digest for an entry whose content is never read (a refused symlink)."""
    return hashlib.sha256(b"custody-refused-entry\x00" + ref.encode()).hexdigest()


def source_label(source: str) -> str:
    """How events name a source: a directory or store prefix as given.

    A single file is named by the digest of its name instead (a file name may carry PHI).
    """
    head, _, name = source.rstrip("/").rpartition("/")
    if "." in name:  # looks like a file (or object key) rather than an inbox directory
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        return f"{head}/<file name sha256 {digest}>"
    return source
