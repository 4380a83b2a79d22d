"""The parse-ahead thread: same items in the same order, errors where they happened, no leaks."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from custody.labs.prefetch import prefetched


def test_items_come_in_order() -> None:
    assert list(prefetched(iter(range(1000)), depth=2)) == list(range(1000))


def test_a_producer_error_is_raised_after_the_items_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("piece 3 is not HL7")

    seen: list[int] = []
    with pytest.raises(ValueError, match="piece 3"):
        for item in prefetched(items()):
            seen.append(item)
    assert seen == [1, 2]


def test_a_consumer_that_stops_early_stops_the_producer() -> None:
    produced: list[int] = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    for item in prefetched(endless(), depth=2):
        if item == 3:
            break
    assert not [t for t in threading.enumerate() if t.name == "custody-prefetch"]
    assert len(produced) <= 3 + 2 + 2  # bounded: never more than depth ahead (plus one in hand)
