"""What a stanza is in a repository: the cluster it belongs to, and how its files are encoded.

Layout (docs/architecture.md, "Layers")::

    archive/STANZA/archive.info
    archive/STANZA/VER-N/...          the WAL archive (pgpush.repo.walarchive)
    backup/STANZA/backup.info
    backup/STANZA/LABEL/backup.manifest

``archive.info`` names the cluster (system id, PostgreSQL version) every WAL
file and backup of the stanza must come from, the archive ids (``VER-N``) its
WAL lives under, and the cipher: its salt derives the key, its check proves
the passphrase.  Every stored file, WAL or backup, is compressed, then
encrypted when the stanza is; :class:`Repository` encodes and decodes them
and bounds what a hostile file may decode to.  What the archived WAL files
mean (their names, duplicates, a split brain, dropped segments) is
:mod:`pgpush.repo.walarchive`'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from pgpush.config import Config
from pgpush.errors import (
    ArchiveMismatchError,
    FileMissingError,
    FileReadError,
    OptionInvalidValueError,
    UnexpectedError,
)
from pgpush.repo.codec import compress, crypto
from pgpush.storage.base import Storage

MAX_WAL_BYTES = 1 << 30  # PostgreSQL's largest WAL segment: no archived file decodes to more


def sha1_hex(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _db_problem(db: object) -> str | None:
    """What makes ``db`` (archive.info's ``db`` or a ``history`` entry) unusable; None when sound."""
    if not isinstance(db, dict):
        return "a database entry is not an object"
    ident, system_id, version = db.get("id"), db.get("system-id"), db.get("version")
    if not isinstance(ident, int) or isinstance(ident, bool) or ident < 1:
        return f"database id {str(ident)[:32]!r} is not a positive number"
    if not isinstance(system_id, int) or isinstance(system_id, bool) or not 0 <= system_id < 1 << 64:
        return f"system-id {str(system_id)[:32]!r} is not a system identifier"
    if not isinstance(version, str) or not version.isdigit() or len(version) > 3:
        return f"version {str(version)[:32]!r} is not a PostgreSQL major version"
    return None


def archive_info_problem(info: object) -> str | None:
    """What makes a parsed ``archive.info`` unusable (it comes from the repository: anything may be
    there); None when sound.  Its ids name directories, so they are checked before any is used."""
    if not isinstance(info, dict):
        return "not an object"
    history = info.get("history")
    if not isinstance(history, list) or not history:
        return "'history' is not a list of databases"
    for db in [info.get("db"), *history]:
        if problem := _db_problem(db):
            return problem
    cipher = info.get("cipher")
    if cipher is not None and not (isinstance(cipher, dict) and isinstance(cipher.get("type"), str)):
        return "'cipher' is not an object with a type"
    return None


def stanza_difference(source: dict, target: dict) -> str | None:
    """Why two checked ``archive.info`` cannot hold copies of each other's files; None when they can:
    the same current database (id, system id, version), and every archive id of ``source`` is one of
    ``target`` for the same database (its files go under that id)."""
    def ident(db: dict) -> tuple[int, int, str]:
        return int(db["id"]), int(db["system-id"]), str(db["version"])

    if ident(source["db"]) != ident(target["db"]):
        (i, s, v), (ti, ts, tv) = ident(source["db"]), ident(target["db"])
        return (f"PostgreSQL {v} system {s} (archive id {v}-{i}) in the source, PostgreSQL {tv} system {ts} "
                f"(archive id {tv}-{ti}) in the target")
    known = {ident(h) for h in target["history"]}
    for h in source["history"]:
        if ident(h) not in known:
            return f"archive id {h['version']}-{h['id']} of the source is not in the target's history"
    return None


class Repository:
    """A stanza over a :class:`Storage`: its ``archive.info`` and its files' encoding; knows nothing of the CLI."""

    def __init__(self, storage: Storage, stanza: str, compress_type: str = "zst", compress_level: int | None = None,
                 cipher_type: str = "none", cipher_pass: str | None = None, index: int = 1):
        self.storage = storage
        self.index = index  # which of repo1..repo4 this is (docs/operations.md, "Several repositories")
        self.stanza = stanza
        self.compress_type = compress_type
        self.compress_level = compress_level
        self.cipher_type = cipher_type
        self.cipher_pass = cipher_pass
        self._key: bytes | None = None
        self._archive_info: dict | None = None

    @classmethod
    def from_config(cls, cfg: Config, storage: Storage | None = None) -> Repository:
        from pgpush.storage import open_storage

        if cfg["repo1-cipher-type"] != "none" and not cfg.get("repo1-cipher-pass"):
            from pgpush.errors import OptionRequiredError

            raise OptionRequiredError(f"{cfg.key('repo1-cipher-type')}=aes-256-gcm requires option: "
                                      f"{cfg.key('repo1-cipher-pass')}")
        return cls(storage or open_storage(cfg), cfg.stanza, cfg["compress-type"], cfg.get("compress-level"),
                   cfg["repo1-cipher-type"], cfg.get("repo1-cipher-pass"), index=cfg.repo_index)

    @property
    def label(self) -> str:
        """``repo1``..``repo4``."""
        return f"repo{self.index}"

    # -- paths -------------------------------------------------------------

    @property
    def archive_root(self) -> str:
        return f"archive/{self.stanza}"

    @property
    def backup_root(self) -> str:
        return f"backup/{self.stanza}"

    # -- archive.info --------------------------------------------------------

    def load_archive_info(self, refresh: bool = False) -> dict:
        if self._archive_info is not None and not refresh:
            return self._archive_info
        try:
            raw = self.storage.read(f"{self.archive_root}/archive.info")
        except FileNotFoundError:
            raise FileMissingError(
                f"archive.info is missing for stanza '{self.stanza}' in {self.storage.description}: "
                "run stanza-create first") from None
        try:
            info = json.loads(raw)
        except (ValueError, RecursionError):
            raise FileReadError(f"archive.info of stanza '{self.stanza}' is corrupt") from None
        if problem := archive_info_problem(info):
            raise FileReadError(f"archive.info of stanza '{self.stanza}' is corrupt: {problem}")
        self._archive_info = info
        self._check_cipher(info)
        return info

    def _check_cipher(self, info: dict) -> None:
        cipher = info.get("cipher") or {"type": "none"}
        if cipher["type"] != self.cipher_type:
            raise OptionInvalidValueError(
                f"option '{self.label}-cipher-type' is '{self.cipher_type}' but stanza '{self.stanza}' was created "
                f"with '{cipher['type']}'")
        if self.cipher_type == "none":
            return
        try:
            salt, check = bytes.fromhex(cipher["salt"]), bytes.fromhex(cipher["check"])
        except (KeyError, TypeError, ValueError):
            raise FileReadError(f"archive.info of stanza '{self.stanza}' is corrupt: its cipher has no valid salt "
                                "and check") from None
        self._key = crypto.derive_key(self.cipher_pass or "", salt)
        try:
            token = b"".join(crypto.decrypt([check], self._key))
        except ValueError:
            token = b""
        if token != b"pgpush":
            raise OptionInvalidValueError(f"option '{self.label}-cipher-pass' does not decrypt stanza '{self.stanza}'")

    def archive_id(self) -> str:
        db = self.load_archive_info()["db"]
        return f"{db['version']}-{db['id']}"

    def archive_ids(self) -> list[str]:
        """Every archive id of the stanza, newest first."""
        info = self.load_archive_info()
        return [f"{h['version']}-{h['id']}" for h in sorted(info["history"], key=lambda h: -h["id"])]

    def check_cluster(self, system_id: int, version: int, what: str) -> None:
        db = self.load_archive_info()["db"]
        if int(db["system-id"]) != system_id or int(db["version"]) != version:
            raise ArchiveMismatchError(
                f"{what} is from PostgreSQL {version} system {system_id}, but stanza '{self.stanza}' belongs to "
                f"PostgreSQL {db['version']} system {db['system-id']}\n"
                "HINT: is this the right stanza for this cluster?")

    def stanza_create(self, system_id: int, version: int) -> str:
        """Create the stanza, or confirm it exists for the same cluster (idempotent)."""
        try:
            info = self.load_archive_info(refresh=True)
        except FileMissingError:
            info = None
        if info is not None:
            self.check_cluster(system_id, version, "the cluster")
            self._ensure_backup_info()
            return f"stanza '{self.stanza}' already exists for system {system_id} and is valid"
        if self.storage.list(self.archive_root) or self.storage.list_dirs(self.archive_root):
            raise FileReadError(f"stanza '{self.stanza}' has files in the repository but no archive.info: refusing to "
                                "overwrite; check the repository")
        db = {"id": 1, "system-id": system_id, "version": str(version)}
        if not self._write_archive_info(db, [db]):
            return self.stanza_create(system_id, version)  # a concurrent create: check it matches
        return f"stanza '{self.stanza}' created for PostgreSQL {version} system {system_id}"

    def _write_archive_info(self, db: dict, history: list[dict]) -> bool:
        """Write a new ``archive.info`` (with this repository's own cipher) and ``backup.info``;
        False when an ``archive.info`` appeared meanwhile (nothing written)."""
        info: dict[str, Any] = {"format": 1, "db": db, "history": history, "cipher": {"type": self.cipher_type}}
        if self.cipher_type != "none":
            salt = os.urandom(16)
            self._key = crypto.derive_key(self.cipher_pass or "", salt)
            info["cipher"]["salt"] = salt.hex()
            info["cipher"]["check"] = b"".join(crypto.encrypt([b"pgpush"], self._key)).hex()
        try:
            self.storage.put(f"{self.archive_root}/archive.info", [json.dumps(info, indent=2).encode()])
        except FileExistsError:
            self._key = None
            return False
        self._archive_info = info
        self._ensure_backup_info()
        return True

    def adopt_stanza(self, source: dict, source_label: str) -> str | None:
        """Make this repository's stanza the one ``source`` (another repository's checked ``archive.info``)
        describes: created from it (same database and history, this repository's own cipher) when it
        has none; else it must describe the same cluster (44).  Returns what was done, None when the
        stanza was there already (``repo-sync``, docs/architecture.md)."""
        try:
            info = self.load_archive_info(refresh=True)
        except FileMissingError:
            info = None
        if info is None:
            if self.storage.list(self.archive_root) or self.storage.list_dirs(self.archive_root):
                raise FileReadError(f"stanza '{self.stanza}' has files in the repository but no archive.info: "
                                    "refusing to overwrite; check the repository")
            db = {k: source["db"][k] for k in ("id", "system-id", "version")}
            history = [{k: h[k] for k in ("id", "system-id", "version")} for h in source["history"]]
            if self._write_archive_info(db, history):
                return (f"stanza '{self.stanza}' created from {source_label}'s for PostgreSQL {db['version']} "
                        f"system {db['system-id']}")
            return self.adopt_stanza(source, source_label)  # created concurrently: check it matches
        if problem := stanza_difference(source, info):
            raise ArchiveMismatchError(
                f"stanza '{self.stanza}' of {source_label} and of this repository describe different clusters: "
                f"{problem}\nHINT: is this repository used by another cluster?")
        self._ensure_backup_info()
        return None

    def _ensure_backup_info(self) -> None:
        try:
            self.storage.put(f"{self.backup_root}/backup.info", [json.dumps({"format": 1, "backups": []}).encode()])
        except FileExistsError:
            pass

    # -- encoding ------------------------------------------------------------

    def extension(self) -> str:
        return compress.EXTENSIONS[self.compress_type]

    def encode(self, chunks: Iterable[bytes], compress_type: str | None = None) -> Iterator[bytes]:
        kind = self.compress_type if compress_type is None else compress_type
        out = compress.compress(chunks, kind, self.compress_level)
        if self.cipher_type != "none":
            out = crypto.encrypt(out, self._cipher_key())
        return out

    def _cipher_key(self) -> bytes:
        """The key of this encrypted repository: derived, and checked against archive.info, when it is read."""
        self.load_archive_info()
        if self._key is None:  # _check_cipher sets it for every cipher but "none"
            raise UnexpectedError(f"no key derived for repo1-cipher-type '{self.cipher_type}'")
        return self._key

    def decode(self, chunks: Iterable[bytes], filename: str) -> Iterator[bytes]:
        if self.cipher_type != "none":
            chunks = crypto.decrypt(chunks, self._cipher_key())
        return compress.decompress(chunks, compress.type_of(filename))

    def decode_bounded(self, path: str, what: str, limit: int = MAX_WAL_BYTES) -> Iterator[bytes]:
        """The decoded content of repository file ``path``, refused (42) once it passes ``limit`` bytes.

        The decoders yield at most ``compress.OUT_MAX`` bytes a call, whatever their input (an
        encrypted record is 1 MiB of it in one piece), so a decompression bomb (zstd turns 4
        stored bytes into 128 KB) is found about 1 MiB past the limit, never decoded whole into
        memory or into PostgreSQL's ``pg_wal``.  The bound lives in the decoders, so the stored
        chunks go to them as the storage reads them, without being cut smaller first.
        """
        total = 0
        for chunk in self.decode(self.storage.read_chunks(path), path):
            total += len(chunk)
            if total > limit:
                raise FileReadError(f"{what} in the repository is corrupt: it decodes to more than {limit} bytes")
            yield chunk

    def decode_verified(self, path: str, what: str, sha1: str, size: int | None = None) -> Iterator[bytes]:
        """The decoded content of repository file ``path``, streamed; raises (42) before its end when it
        is not ``size`` bytes (when given) with SHA-1 ``sha1``.  A consumer that stores the chunks (a
        ``put``) is aborted by that error, so what does not match is never stored whole."""
        digest = hashlib.sha1()
        total = 0
        try:
            for chunk in self.decode_bounded(path, what, MAX_WAL_BYTES if size is None else size):
                digest.update(chunk)
                total += len(chunk)
                yield chunk
        except ValueError as exc:
            raise FileReadError(f"{what} in the repository is corrupt: {exc}") from None
        if size is not None and total != size:
            raise FileReadError(f"{what} in the repository is corrupt: it decodes to {total} bytes, not {size}")
        if digest.hexdigest() != sha1:
            raise FileReadError(f"{what} in the repository is corrupt: SHA1 {digest.hexdigest()} does not match "
                                f"the expected {sha1}")

    def read_verified(self, path: str, sha1: str | None, what: str) -> bytes:
        """Read, decrypt, decompress and check the SHA-1 of a repository file."""
        try:
            data = b"".join(self.decode_bounded(path, what))
        except ValueError as exc:
            raise FileReadError(f"{what} in the repository is corrupt: {exc}") from None
        if sha1 is not None:
            got = sha1_hex(data)
            if got != sha1:
                raise FileReadError(f"{what} in the repository is corrupt: SHA1 {got} does not match the expected {sha1}")
        return data
