"""gzip written as independently deflated 1 MiB blocks: in parallel, and without
searching for matches in blocks that cannot be compressed.

Why not one ``compressobj`` over the whole file: deflate is the slowest step of a
``gz`` push (16 MB of WAL takes about 0.3 s at level 6 on this project's machine, four
times SFTP's cost), and one deflate stream uses one core.  Like pigz, each block here
is its own raw deflate stream, primed with the 32 KiB of input before it (the whole
window deflate can look back over, so matches across the boundary are still found) and
ended by a sync flush, so the blocks join into one ordinary gzip member that gzip, zlib
and pgBackRest read as they would any other.  Priming from the *input* makes every block
independent, so ``threads`` of them are compressed at once (zlib releases the GIL).

Incompressible blocks: WAL full of already compressed or encrypted data gains nothing
from deflate, and at level 6 zlib spends nearly its full time searching before it falls
back to stored blocks anyway.  A block whose three 16 KiB samples (each primed with the
32 KiB before it) do not shrink by ``STORE_GAIN`` at level 1 is stored directly (deflate
level 0): the same bytes zlib would have produced to within a few per mille, a hundred
times sooner.  zstd makes the same decision inside its own blocks.  A block that is
compressible only away from its samples loses that part of its gain; the probe reads
5 % of a block at level 1.
"""

from __future__ import annotations

import itertools
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

BLOCK = 1 << 20
WINDOW = 32 << 10  # deflate's look-back: the dictionary a block is primed with
SAMPLE = 16 << 10
STORE_GAIN = 0.02  # store a block whose samples shrink by less than this at level 1
_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # gzip, deflate, no name, no mtime, OS unknown
_FINAL = b"\x03\x00"  # an empty final block with fixed Huffman codes: ends the deflate stream


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The input again, cut into blocks of exactly ``size`` bytes (the last may be shorter)."""
    pending = bytearray()
    for chunk in chunks:
        if not pending and len(chunk) == size:
            yield bytes(chunk)
            continue
        pending += chunk
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


def incompressible(zlib, block: bytes, window: bytes = b"") -> bool:
    """Do three samples (start, middle, end) of ``block`` fail to shrink at level 1?

    Each sample is primed with the 32 KiB before it, as deflate would see it, so data
    that repeats at any distance deflate can reach is not taken for noise.
    """
    if len(block) < 4 * SAMPLE:
        return False  # small: deflate it, the search is cheap
    view = memoryview(block)
    raw = packed = 0
    for start in (0, (len(block) - SAMPLE) // 2, len(block) - SAMPLE):
        before = window if start == 0 else view[max(0, start - WINDOW) : start]
        if before:
            obj = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, before)
        else:
            obj = zlib.compressobj(1, zlib.DEFLATED, -15)
        packed += len(obj.compress(view[start : start + SAMPLE])) + len(obj.flush())
        raw += SAMPLE
    return packed > raw * (1 - STORE_GAIN)


def deflate_block(zlib, block: bytes, window: bytes, level: int) -> bytes:
    """``block`` as raw deflate data ending on a byte boundary (sync flush), not final."""
    if level and incompressible(zlib, block, window):
        level = 0
    if window and level:
        obj = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, window)
    else:
        obj = zlib.compressobj(level, zlib.DEFLATED, -15)
    return obj.compress(block) + obj.flush(zlib.Z_SYNC_FLUSH)


def compress(zlib, chunks: Iterable[bytes], level: int, threads: int = 2) -> Iterator[bytes]:
    """One gzip member of ``chunks``, deflated ``threads`` blocks at a time, in order.

    A file of one block (most files of a base backup) is deflated in the caller's
    thread: no pool is started for it.
    """
    yield _HEADER
    crc = 0
    size = 0
    window = b""
    blocks = _rechunk(chunks, BLOCK)
    first = next(blocks, None)
    if first is not None:
        second = next(blocks, None)
        if second is None:
            crc, size = zlib.crc32(first), len(first)
            yield deflate_block(zlib, first, b"", level)
        else:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gz") as pool:
                running: deque = deque()
                for block in itertools.chain((first, second), blocks):
                    crc = zlib.crc32(block, crc)
                    size += len(block)
                    running.append(pool.submit(deflate_block, zlib, block, window, level))
                    window = block[-WINDOW:]
                    while len(running) >= threads:
                        yield running.popleft().result()
                while running:
                    yield running.popleft().result()
    yield _FINAL
    yield struct.pack("<II", crc, size & 0xFFFFFFFF)
