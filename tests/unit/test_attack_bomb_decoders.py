"""The decoders themselves are bounded: whatever the stored bytes, one decoded piece is at most
``compress.OUT_MAX`` bytes, so a consumer that stops at a size limit (a manifest's, a segment's)
never holds more than a small buffer: not even when the bomb arrives as one big input piece
(an encrypted record of 1 MiB, a storage read of several MB).
"""

from __future__ import annotations

import itertools
import os
import zlib

import lz4.frame
import pytest
import zstandard

from pgpush.repo.codec import compress, crypto

BOMB = 1 << 30  # decoded size of each bomb: far more than any piece may be
PIECE_MAX = 1 << 20  # compress.OUT_MAX, spelled out: what the test holds the decoders to


def _zeros(total: int, piece: int = 64 << 20):
    for _ in range(total // piece):
        yield bytes(piece)


def _gz_bomb() -> bytes:
    obj = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join([obj.compress(z) for z in _zeros(BOMB)] + [obj.flush()])


def _zst_bomb() -> bytes:
    obj = zstandard.ZstdCompressor(level=1).compressobj()
    return b"".join([obj.compress(z) for z in _zeros(BOMB)] + [obj.flush()])


def _lz4_bomb() -> bytes:
    comp = lz4.frame.LZ4FrameCompressor(block_size=lz4.frame.BLOCKSIZE_MAX4MB)
    return b"".join([comp.begin()] + [comp.compress(z) for z in _zeros(BOMB)] + [comp.flush()])


BOMBS = {"gz": _gz_bomb, "zst": _zst_bomb, "lz4": _lz4_bomb}


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {kind: make() for kind, make in BOMBS.items()}


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_a_bomb_given_in_one_piece_decodes_in_pieces_of_at_most_out_max(bombs, kind):
    stored = bombs[kind]
    pieces = compress.decompress([stored], kind)
    first = [len(p) for p in itertools.islice(pieces, 64)]
    assert len(stored) < 8 << 20 and len(first) == 64
    assert max(first) <= PIECE_MAX, (kind, max(first))
    pieces.close()


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_a_bomb_inside_an_encrypted_record_decodes_in_pieces_of_at_most_out_max(bombs, kind):
    key = os.urandom(32)
    stored = b"".join(crypto.encrypt([bombs[kind]], key))  # records of 1 MiB of compressed bomb each
    pieces = compress.decompress(crypto.decrypt([stored], key), kind)
    first = [len(p) for p in itertools.islice(pieces, 64)]
    assert max(first) <= PIECE_MAX, (kind, max(first))
    pieces.close()


def test_an_encrypted_record_longer_than_any_written_is_refused_before_it_is_buffered():
    key = os.urandom(32)
    header = b"".join(crypto.encrypt([b"x"], key))[: len(crypto.MAGIC) + 8]
    lying = header + (crypto.RECORD + 16 + 1).to_bytes(4, "big")
    with pytest.raises(ValueError, match="a record of"):
        list(crypto.decrypt(itertools.chain([lying], itertools.repeat(b"\0" * 65536, 64)), key))


def _wal_like(size: int = 3 << 20) -> bytes:
    return b"".join(os.urandom(1000) + b"abc" * 700 + bytes(5000) for _ in range(size // 8100))


@pytest.mark.parametrize("kind", ["gz", "zst", "lz4"])
@pytest.mark.parametrize("piece", [1, 777, 1 << 20])
def test_bounded_decoders_give_back_exactly_what_was_compressed(kind, piece):
    data = _wal_like() if piece > 1 else _wal_like(200_000)
    stored = b"".join(compress.compress([data], kind))
    pieces = [stored[i:i + piece] for i in range(0, len(stored), piece)]
    out = list(compress.decompress(pieces, kind))
    assert b"".join(out) == data and max(map(len, out)) <= PIECE_MAX


@pytest.mark.parametrize("frame", [
    zstandard.ZstdCompressor(write_checksum=True).compress,  # a content checksum after the last block
    zstandard.ZstdCompressor(write_content_size=True).compress,  # a single-segment frame with its size
    lambda data: zstandard.ZstdCompressor(write_dict_id=False, level=19).compress(data),
])
def test_zstd_frames_of_every_header_shape_decode(frame):
    for data in (b"", b"x", _wal_like(400_000)):
        assert b"".join(compress.decompress([frame(data)], "zst")) == data


@pytest.mark.parametrize("kind", ["gz", "zst", "lz4"])
def test_a_truncated_or_extended_stream_is_refused(kind):
    data = _wal_like(300_000)
    stored = b"".join(compress.compress([data], kind))
    with pytest.raises(ValueError):
        b"".join(compress.decompress([stored[:-5]], kind))
    with pytest.raises(ValueError):
        b"".join(compress.decompress([stored[: len(stored) // 2]], kind))
    if kind != "gz":  # zlib ignores bytes after a gzip member
        with pytest.raises(ValueError):
            b"".join(compress.decompress([stored, b"junk"], kind))
