"""Run a chunk producer in a thread, a few chunks ahead of its consumer.

Why: zlib, zstd and lz4 release the GIL while they work, and paramiko spends its time in
Python building, MAC-ing and encrypting SSH packets.  With the producer (read + compress)
in its own thread a worker keeps both cores of a small database host busy: the next chunk
is compressed while the previous one is being sent.  Measured on this project's 2-core
machine: a 16 MB random segment at gz level 6 over SFTP went from the sum of both costs
to little more than the compression alone (docs/benchmarks.md).

The consumer sees exactly the producer's chunks, in order, and the producer's exception,
re-raised as it was.  Closing the consumer early stops the producer and closes it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

_END = object()
T = TypeVar("T")


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def ahead(chunks: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield the chunks of ``chunks`` (bytes, or any item), produced in a thread up to ``depth`` ahead."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    source = iter(chunks)

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in source:
                if not put(chunk):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Failure(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="pgpush-readahead", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
