"""A stream of stored chunks read as one byte buffer, filled as far as a parser needs.

The zstd frame splitter and the decryptor both parse a framed format out of chunks of any
size (whatever the storage delivered): each asks for "at least N bytes" before it looks at
a header, and consumes what it parsed from the front.  One implementation, so the two can
never disagree on what an early end of the stream looks like.
"""

from __future__ import annotations

from collections.abc import Iterable


class ChunkBuffer:
    """``buf`` holds the bytes not yet consumed; :meth:`fill` extends it from the chunks."""

    __slots__ = ("_chunks", "buf")

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.buf = bytearray()

    def fill(self, n: int) -> bool:
        """Read chunks until ``buf`` holds at least ``n`` bytes; False when the stream ends first."""
        while len(self.buf) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            self.buf.extend(chunk)
        return True

    def more(self) -> bool:
        """Whether any byte is left in the chunks not yet read (consumes them: for a trailing check)."""
        return any(self._chunks)
