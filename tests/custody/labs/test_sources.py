"""Issue 15 item 5: inbox roots, symlinks refused, files named by digest or sequence only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from custody.labs.sources import (
    LabSourceError,
    SymlinkRefusedError,
    check_local_source,
    inbox_roots,
    list_inbox,
    read_inbox_file,
    source_label,
)


def test_issue_15_item_5_source_outside_the_inbox_roots_is_refused_without_saying_more(
    tmp_path: Path,
) -> None:
    inbox, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    inbox.mkdir()
    elsewhere.mkdir()
    roots = inbox_roots([inbox], tmp_path)
    assert check_local_source(str(inbox), roots) == inbox.resolve()
    for bad in (str(elsewhere), "/etc", str(inbox / ".." / "elsewhere"), str(tmp_path / "nope")):
        with pytest.raises(LabSourceError) as caught:
            check_local_source(bad, roots)
        message = str(caught.value)
        assert "elsewhere" not in message and "etc" not in message and "nope" not in message
    # A link inside the root that points out of it resolves outside: refused too.
    (inbox / "escape").symlink_to(elsewhere)
    with pytest.raises(LabSourceError):
        check_local_source(str(inbox / "escape"), roots)


def test_issue_15_item_5_symlinks_are_listed_to_be_refused_and_never_read(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (outside / "secret.hl7").write_bytes(b"MSH|^~\\&|X")
    (inbox / "good.hl7").write_bytes(b"MSH|^~\\&|A")
    (inbox / "DOE_JANE_MRN0099123_potassium.hl7").symlink_to(outside / "secret.hl7")
    (inbox / "linked-dir").symlink_to(outside)
    refs = list_inbox(inbox)
    assert refs == ["DOE_JANE_MRN0099123_potassium.hl7", "good.hl7", "linked-dir"]
    assert read_inbox_file(inbox, "good.hl7") == b"MSH|^~\\&|A"
    for ref in ("DOE_JANE_MRN0099123_potassium.hl7", "linked-dir/secret.hl7"):
        with pytest.raises(SymlinkRefusedError):
            read_inbox_file(inbox, ref)


def test_issue_15_item_5_a_single_file_source_is_named_by_digest_in_events() -> None:
    label = source_label("/srv/inbox/DOE_JANE_MRN0099123_potassium.hl7")
    assert "DOE" not in label and "MRN" not in label and label.startswith("/srv/inbox/<")
    assert source_label("/srv/inbox/lab") == "/srv/inbox/lab"
    assert os.sep == "/"
