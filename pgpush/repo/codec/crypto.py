"""Repository encryption: AES-256-GCM in authenticated 1 MiB records.

The key is derived from ``repo1-cipher-pass`` with PBKDF2-HMAC-SHA256 and the
random salt kept in ``archive.info`` (the stdlib's hashlib; the AEAD comes
from ``cryptography``, which paramiko already depends on).  Stream format::

    b"PGPE1" + 8-byte random nonce prefix
    records: 4-byte big-endian length, ciphertext with its 16-byte tag

Record ``i`` uses nonce ``prefix || i`` (32-bit) and the associated data
``b"\\x01"`` on the last record, ``b"\\x00"`` otherwise, so reordering,
truncation and tampering are all detected.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Iterator

from pgpush.repo.codec.chunks import ChunkBuffer

MAGIC = b"PGPE1"
RECORD = 1024 * 1024
TAG = 16  # AES-GCM's tag, after each record's ciphertext
ITERATIONS = 200_000


def derive_key(passphrase: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", passphrase.encode(), salt, ITERATIONS, 32)


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    yield bytes(buf)


def encrypt(chunks: Iterable[bytes], key: bytes) -> Iterator[bytes]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(key)
    prefix = os.urandom(8)
    yield MAGIC + prefix
    pending: bytes | None = None
    counter = 0
    for record in _rechunk(chunks, RECORD):
        if pending is not None:
            ct = aead.encrypt(prefix + struct.pack(">I", counter), pending, b"\x00")
            yield struct.pack(">I", len(ct)) + ct
            counter += 1
        pending = record
    ct = aead.encrypt(prefix + struct.pack(">I", counter), pending or b"", b"\x01")
    yield struct.pack(">I", len(ct)) + ct


def decrypt(chunks: Iterable[bytes], key: bytes) -> Iterator[bytes]:
    """Decrypt; a wrong key, tampering or truncation raises ValueError."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(key)
    stream = ChunkBuffer(chunks)
    buf, fill = stream.buf, stream.fill
    header = len(MAGIC) + 8

    if not fill(header) or bytes(buf[: len(MAGIC)]) != MAGIC:
        raise ValueError("not an encrypted pgpush file (or wrong repo1-cipher-type)")
    prefix = bytes(buf[len(MAGIC): header])
    del buf[:header]
    counter = 0
    while True:
        if not fill(4):
            raise ValueError("encrypted file is truncated")
        (length,) = struct.unpack(">I", buf[:4])
        if length > RECORD + TAG:  # never written: a length the writer chose must not size a buffer
            raise ValueError(f"encrypted file is corrupt: a record of {length} bytes (at most {RECORD + TAG})")
        if not fill(4 + length):
            raise ValueError("encrypted file is truncated")
        ct = bytes(buf[4: 4 + length])
        del buf[: 4 + length]
        nonce = prefix + struct.pack(">I", counter)
        last = not fill(1)
        try:
            plain = aead.decrypt(nonce, ct, b"\x01" if last else b"\x00")
        except InvalidTag:
            raise ValueError("decryption failed: wrong repo1-cipher-pass or corrupt file") from None
        if plain:
            yield plain
        counter += 1
        if last:
            return
