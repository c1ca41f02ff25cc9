"""readahead.ahead: same chunks in the same order, the producer's exception as it was, early close stops it."""

from __future__ import annotations

import threading
import time

import pytest

from pgpush.repo.readahead import ahead


def test_same_chunks_in_order():
    chunks = [bytes([i]) * (i + 1) for i in range(200)]
    assert list(ahead(iter(chunks), depth=3)) == chunks
    assert list(ahead([])) == []


def test_producer_exception_is_raised_as_it_was():
    def produce():
        yield b"a"
        yield b"b"
        raise FileNotFoundError(2, "gone", "x")

    out = []
    with pytest.raises(FileNotFoundError) as info:
        for chunk in ahead(produce()):
            out.append(chunk)
    assert out == [b"a", b"b"] and info.value.filename == "x"


def test_producer_runs_ahead_in_another_thread():
    seen = []

    def produce():
        for i in range(3):
            seen.append(threading.current_thread().name)
            yield b"%d" % i

    it = ahead(produce(), depth=2)
    assert next(it) == b"0"
    deadline = time.monotonic() + 5
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == ["pgpush-readahead"] * 3  # ran ahead of the consumer
    assert list(it) == [b"1", b"2"]


def test_early_close_stops_and_closes_the_producer():
    closed = threading.Event()

    def produce():
        try:
            for i in range(10_000):
                yield b"%d" % i
        finally:
            closed.set()

    it = ahead(produce(), depth=2)
    assert next(it) == b"0"
    it.close()
    assert closed.wait(5)
    assert not [t for t in threading.enumerate() if t.name == "pgpush-readahead"]
