"""Streaming compression: ``none``, ``gz``, ``zst``, ``lz4``.

Each type has an extension in the repository (``.gz``, ``.zst``, ``.lz4``,
none for ``none``) and a default level.  The libraries are imported when a
type is used, never on the hot path.

``gz`` is written and read with zlib-ng (PyPI ``zlib-ng``) when it is installed: the same
deflate format and levels as zlib, byte streams any gzip reads, about 1.5x faster on
incompressible WAL and 2x on text here.  Without it the standard library's zlib does the job.
It is written in independent 1 MiB blocks, two at a time, and incompressible blocks are
stored rather than searched (:mod:`pgpush.repo.codec.gzblocks`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pgpush.repo.codec.chunks import ChunkBuffer

EXTENSIONS = {"none": "", "gz": ".gz", "zst": ".zst", "lz4": ".lz4"}
DEFAULT_LEVEL = {"none": 0, "gz": 6, "zst": 3, "lz4": 1}
BY_EXTENSION = {ext: kind for kind, ext in EXTENSIONS.items() if ext}


def type_of(filename: str) -> str:
    for ext, kind in BY_EXTENSION.items():
        if filename.endswith(ext):
            return kind
    return "none"


def _zlib():
    """The fastest zlib-compatible module available (zlib-ng, else the standard zlib)."""
    try:
        from zlib_ng import zlib_ng

        return zlib_ng
    except ImportError:  # pragma: no cover - zlib-ng is a dependency; stay usable without it
        import zlib

        return zlib


def compress(chunks: Iterable[bytes], kind: str, level: int | None = None) -> Iterator[bytes]:
    level = DEFAULT_LEVEL[kind] if level is None else level
    if kind == "none":
        yield from chunks
        return
    if kind == "gz":
        from pgpush.repo.codec import gzblocks

        yield from gzblocks.compress(_zlib(), chunks, level)
        return
    if kind == "zst":
        import zstandard

        obj = zstandard.ZstdCompressor(level=level).compressobj()
        for chunk in chunks:
            out = obj.compress(chunk)
            if out:
                yield out
        yield obj.flush()
        return
    if kind == "lz4":
        import lz4.frame

        comp = lz4.frame.LZ4FrameCompressor(compression_level=level)
        yield comp.begin()
        for chunk in chunks:
            out = comp.compress(chunk)
            if out:
                yield out
        yield comp.flush()
        return
    raise ValueError(kind)


OUT_MAX = 1 << 20  # decoded bytes one decoder call may produce: a bomb is stopped by its consumer before it grows
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_BLOCK_MAX = 128 << 10  # the zstd format's largest decoded block (libzstd refuses a bigger one)


def decompress(chunks: Iterable[bytes], kind: str) -> Iterator[bytes]:
    """Decompress; a truncated or corrupt stream raises ValueError.

    Every piece yielded is at most about :data:`OUT_MAX` bytes, whatever the input: a few KB of
    zstd can declare gigabytes, so a consumer that stops at a size limit (the manifest's, a
    segment's) must never be handed, or make the decoder allocate, more than a small bounded
    buffer first.  The slicing of the input by the callers alone cannot promise that (an
    encrypted record is up to 1 MiB of compressed input in one piece).
    """
    if kind == "none":
        yield from chunks
        return
    if kind == "gz":
        yield from _gunzip(chunks)
        return
    if kind == "zst":
        yield from _unzstd(chunks)
        return
    if kind == "lz4":
        yield from _unlz4(chunks)
        return
    raise ValueError(kind)


def _gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """zlib's ``max_length``: what does not fit stays in ``unconsumed_tail`` for the next call."""
    zlib = _zlib()
    obj = zlib.decompressobj(31)
    try:
        for chunk in chunks:
            data = chunk
            while True:
                out = obj.decompress(data, OUT_MAX)
                if out:
                    yield out
                data = obj.unconsumed_tail
                if not data and len(out) < OUT_MAX:
                    break  # input used up and nothing left pending in the decoder
    except zlib.error as exc:
        raise ValueError(f"gz: {exc}") from None
    if not obj.eof:
        raise ValueError("gz: truncated stream")


def _unlz4(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """lz4's ``max_length``: the decoder keeps what it has not decoded until ``needs_input``."""
    import lz4.frame

    obj = lz4.frame.LZ4FrameDecompressor()
    try:
        for chunk in chunks:
            if obj.eof:
                if chunk:
                    raise ValueError("lz4: data after the end of the stream")
                continue
            out = obj.decompress(chunk, OUT_MAX)
            while True:
                if out:
                    yield out
                if obj.needs_input or obj.eof:
                    break
                out = obj.decompress(b"", OUT_MAX)
    except RuntimeError as exc:
        raise ValueError(f"lz4: {exc}") from None
    if not obj.eof:
        raise ValueError("lz4: truncated stream")


def _unzstd(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """zstandard's decompressobj has no output limit, so it is fed whole blocks, a few at a time.

    A zstd block decodes to at most 128 KB (the format's limit, enforced by libzstd), so input cut
    after at most :data:`_ZSTD_BLOCKS` blocks decodes to at most :data:`OUT_MAX`.  Only the block
    headers are read here (a few per MB of ordinary WAL); the decoding stays in libzstd.
    """
    import zstandard

    obj = zstandard.ZstdDecompressor().decompressobj()
    try:
        for piece in _zstd_pieces(chunks):
            out = obj.decompress(piece)
            if out:
                yield out
    except zstandard.ZstdError as exc:
        raise ValueError(f"zst: {exc}") from None
    if not obj.eof:
        raise ValueError("zst: truncated stream")


_ZSTD_BLOCKS = OUT_MAX // ZSTD_BLOCK_MAX


def _zstd_header_size(descriptor: int) -> int:
    """Bytes of a zstd frame header after the magic number, from its descriptor byte (RFC 8878 3.1.1.1)."""
    single_segment = descriptor >> 5 & 1
    fcs = (single_segment, 2, 4, 8)[descriptor >> 6]
    return 1 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3] + fcs


def _zstd_pieces(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The stored bytes of one zstd frame, cut after every :data:`_ZSTD_BLOCKS` blocks (RFC 8878 3.1.1.2).

    A truncated frame is passed on as it is (the decoder reports it); anything after the frame,
    or a frame that is not zstd's (a skippable frame could hide a second one), is refused.
    """
    stream = ChunkBuffer(chunks)
    buf, fill = stream.buf, stream.fill

    if not fill(5):
        yield bytes(buf)
        return
    if buf[:4] != ZSTD_MAGIC:
        raise ValueError("zst: not a zstd frame")
    pos, blocks, checksum = 4 + _zstd_header_size(buf[4]), 0, buf[4] >> 2 & 1
    while fill(pos + 3):
        header = int.from_bytes(buf[pos:pos + 3], "little")
        if header >> 1 & 3 == 3:
            raise ValueError("zst: corrupt block (reserved type)")
        pos += 3 + (1 if header >> 1 & 3 == 1 else header >> 3)  # an RLE block stores one byte
        blocks += 1
        if header & 1:  # the last block
            pos += 4 * checksum
            break
        if blocks == _ZSTD_BLOCKS and fill(pos):
            yield bytes(buf[:pos])
            del buf[:pos]
            pos, blocks = 0, 0
    if fill(pos + 1) or stream.more():
        raise ValueError("zst: data after the end of the stream")
    yield bytes(buf)
