"""gz written in independent blocks must be one ordinary gzip member, byte for byte the input."""

from __future__ import annotations

import gzip
import os
import random
import zlib

import pytest
from zlib_ng import zlib_ng

from pgpush.repo.codec import compress, gzblocks

BLOCK = gzblocks.BLOCK


def text(n: int) -> bytes:
    rng = random.Random(n)
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(300)]
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choice(words) for _ in range(20)) + b"\n"
    return bytes(out[:n])


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


@pytest.mark.parametrize("module", [zlib, zlib_ng], ids=["zlib", "zlib-ng"])
@pytest.mark.parametrize("size", [0, 1, 4096, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12345])
@pytest.mark.parametrize("piece", [1000, 65536, BLOCK])
def test_round_trip_through_gzip_and_zlib(module, size, piece):
    data = (text(size // 2) + os.urandom(size - size // 2))[:size]
    out = b"".join(gzblocks.compress(module, pieces(data, piece), 6))
    assert gzip.decompress(out) == data
    assert zlib.decompressobj(31).decompress(out) == data
    assert b"".join(compress.decompress(pieces(out, 7777), "gz")) == data


def test_incompressible_blocks_are_stored_and_compressible_ones_deflated():
    rnd = os.urandom(2 * BLOCK)
    assert gzblocks.incompressible(zlib_ng, rnd[:BLOCK])
    assert not gzblocks.incompressible(zlib_ng, text(BLOCK))
    out = b"".join(gzblocks.compress(zlib_ng, pieces(rnd, BLOCK), 6))
    assert len(rnd) < len(out) < len(rnd) * 1.001  # stored: 5 bytes per 64 KiB
    small = b"".join(gzblocks.compress(zlib_ng, pieces(text(2 * BLOCK), BLOCK), 6))
    assert len(small) < BLOCK  # a third of the input


def test_level_zero_stores_everything():
    data = text(BLOCK + 10)
    out = b"".join(gzblocks.compress(zlib_ng, [data], 0))
    assert len(out) > len(data)
    assert gzip.decompress(out) == data


def test_data_repeating_beyond_a_sample_but_within_the_window_is_deflated():
    """A period longer than a 16 KiB sample but within deflate's reach: the probe, primed with
    what precedes each sample, must see the repeats, and the block must compress."""
    period = os.urandom(20 * 1024)
    data = os.urandom(BLOCK - len(period)) + period * (BLOCK // len(period) + 1)
    second = data[BLOCK : 2 * BLOCK]
    assert not gzblocks.incompressible(zlib_ng, second, data[BLOCK - gzblocks.WINDOW : BLOCK])
    out = b"".join(gzblocks.compress(zlib_ng, [data], 6))
    assert gzip.decompress(out) == data
    assert len(out) < BLOCK + 64 * 1024  # the second block, all repeats, costs little


def test_output_does_not_depend_on_the_thread_count_or_the_input_pieces():
    data = text(BLOCK) + os.urandom(BLOCK) + text(BLOCK // 3)
    one = b"".join(gzblocks.compress(zlib_ng, [data], 6, threads=1))
    assert b"".join(gzblocks.compress(zlib_ng, pieces(data, 4099), 6, threads=3)) == one
