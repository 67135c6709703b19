"""`read_ahead`: a thread reads the next batches while this one is worked on, without changing what the
consumer sees: the same items in order, the producer's error in its place, nothing left running."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pytest

from synthkiln.engine.corpus import read_ahead
from synthkiln.engine.errors import SynthkilnError


def test_items_arrive_in_order_and_all() -> None:
    assert list(read_ahead(iter(range(1000)))) == list(range(1000))


def test_a_producer_error_is_raised_after_the_items_before_it() -> None:
    def batches() -> Iterator[int]:
        yield from (0, 1, 2)
        raise SynthkilnError("c.jsonl: line 4: not JSON")

    seen = []
    with pytest.raises(SynthkilnError, match="line 4"):
        for item in read_ahead(batches()):
            seen.append(item)
    assert seen == [0, 1, 2]


def test_a_consumer_that_stops_stops_the_producer() -> None:
    produced = []

    def endless() -> Iterator[int]:
        for number in itertools.count():
            produced.append(number)
            yield number

    items = read_ahead(endless(), depth=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()
    assert not any(t.name == "read-ahead" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 3 + 2 + 1  # taken, queued, and the one in hand when it was told to stop
