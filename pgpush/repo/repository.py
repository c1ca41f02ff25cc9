"""What the files in a repository mean: stanzas, archive.info, archived WAL.

Layout (docs/architecture.md, "Layers")::

    archive/STANZA/archive.info
    archive/STANZA/VER-N/TTTTTTTTLLLLLLLL/SEGMENT-SHA1[.EXT]
    archive/STANZA/VER-N/TIMELINE.history
    backup/STANZA/backup.info
    backup/STANZA/LABEL/backup.manifest

A WAL file is stored under its name, the SHA-1 of its uncompressed content
and the compression extension; it is compressed, then encrypted when the
stanza is.  Every read verifies the SHA-1.  Segments dropped by
``archive-push-queue-max`` leave a ``SEGMENT.dropped`` marker beside where
they would have been, so ``info`` can report the hole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import time
from collections.abc import Iterable, Iterator

from pgpush import wal
from pgpush.errors import (
    ArchiveDuplicateError,
    ArchiveMismatchError,
    FileMissingError,
    FileReadError,
    FormatError,
    OptionInvalidValueError,
    PgPushError,
    WalNotFound,
)
from pgpush.repo import readahead
from pgpush.repo.codec import compress, crypto
from pgpush.storage.base import Storage

ARCHIVED_RE = re.compile(r"^(?P<wal>[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?)-(?P<sha>[0-9a-f]{40})(?P<ext>\.gz|\.zst|\.lz4)?$")
DROPPED_SUFFIX = ".dropped"
MAX_WAL_BYTES = 1 << 30  # PostgreSQL's largest WAL segment: no archived file decodes to more
HEADER_SIZE = struct.calcsize(wal.LONG_HEADER_FORMAT)


def _segment_size(name: str, head: bytes) -> int:
    """The segment size in a stored segment's long page header (push checked it; a bad one is corruption)."""
    try:
        return wal.parse_header(head, name).segment_size
    except PgPushError as exc:
        raise FileReadError(f"WAL file '{name}' in the repository is corrupt: {exc}") from None


class _ByteCounter:
    """A sink that keeps only how many bytes were written to it (a stored copy read back to be checked)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)


def sha1_hex(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def history_problem(name: str, data: bytes) -> str | None:
    """What makes ``data`` not a timeline history file PostgreSQL could read as ``name``; None when sound.

    PostgreSQL's format: ``TLI<TAB>LSN<TAB>reason`` lines, blank lines and ``#`` comments; the
    timelines increase and stay below the file's own.  A garbage history archived once would
    make every later recovery through that timeline fail, so it is refused before it is stored.
    """
    try:
        rows = wal.parse_history(data.decode("utf-8", "replace"))
    except (ValueError, FormatError) as exc:
        return f"history file '{name}' is malformed: {exc}"
    if not rows:
        return f"history file '{name}' has no timeline switch line"
    own = wal.timeline_of(name)
    previous = 0
    for tli, _lsn, _reason in rows:
        if not previous < tli < own:
            return (f"history file '{name}' is malformed: timeline {tli} is not between {previous} and {own} "
                    "(timelines must increase and stay below the file's own)")
        previous = tli
    return None


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


def stored_checksums(stored: Iterable[str]) -> set[str]:
    """The distinct SHA-1s among stored names of one WAL file (a compression change keeps the SHA-1)."""
    return {m.group("sha") for f in stored if (m := ARCHIVED_RE.fullmatch(f))}


def conflict_error(name: str, checksums: Iterable[str]) -> ArchiveDuplicateError:
    """One WAL name stored with different contents (a split brain): nothing may choose between them."""
    return ArchiveDuplicateError(
        f"WAL file '{name}' is stored in the archive with different checksums: SHA1 {', '.join(sorted(checksums))}\n"
        "HINT: two clusters (a split brain?) archived different WAL under one name; keep the right one, remove "
        "the other from the repository")


class Repository:
    """WAL and stanza meaning over a :class:`Storage`; knows nothing of the CLI."""

    def __init__(self, storage: Storage, stanza: str, compress_type: str = "zst", compress_level: int | None = None,
                 cipher_type: str = "none", cipher_pass: str | None = None):
        self.storage = storage
        self.stanza = stanza
        self.compress_type = compress_type
        self.compress_level = compress_level
        self.cipher_type = cipher_type
        self.cipher_pass = cipher_pass
        self._key: bytes | None = None
        self._archive_info: dict | None = None

    @classmethod
    def from_config(cls, cfg, storage: Storage | None = None) -> Repository:
        from pgpush.storage import open_storage

        if cfg["repo1-cipher-type"] != "none" and not cfg.get("repo1-cipher-pass"):
            from pgpush.errors import OptionRequiredError

            raise OptionRequiredError("repo1-cipher-type=aes-256-gcm requires option: repo1-cipher-pass")
        return cls(storage or open_storage(cfg), cfg.stanza, cfg["compress-type"], cfg.get("compress-level"),
                   cfg["repo1-cipher-type"], cfg.get("repo1-cipher-pass"))

    # -- paths -------------------------------------------------------------

    @property
    def archive_root(self) -> str:
        return f"archive/{self.stanza}"

    @property
    def backup_root(self) -> str:
        return f"backup/{self.stanza}"

    def wal_dir(self, archive_id: str, name: str) -> str:
        if wal.kind(name) == "history":
            return f"{self.archive_root}/{archive_id}"
        return f"{self.archive_root}/{archive_id}/{wal.archive_dir(name)}"

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
                f"option 'repo1-cipher-type' is '{self.cipher_type}' but stanza '{self.stanza}' was created "
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
            raise OptionInvalidValueError(f"option 'repo1-cipher-pass' does not decrypt stanza '{self.stanza}'")

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
        info = {"format": 1, "db": db, "history": [db], "cipher": {"type": self.cipher_type}}
        if self.cipher_type != "none":
            salt = os.urandom(16)
            self._key = crypto.derive_key(self.cipher_pass or "", salt)
            info["cipher"]["salt"] = salt.hex()
            info["cipher"]["check"] = b"".join(crypto.encrypt([b"pgpush"], self._key)).hex()
        try:
            self.storage.put(f"{self.archive_root}/archive.info", [json.dumps(info, indent=2).encode()])
        except FileExistsError:
            return self.stanza_create(system_id, version)  # a concurrent create: check it matches
        self._archive_info = info
        self._ensure_backup_info()
        return f"stanza '{self.stanza}' created for PostgreSQL {version} system {system_id}"

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
            self.load_archive_info()
            out = crypto.encrypt(out, self._key)
        return out

    def decode(self, chunks: Iterable[bytes], filename: str) -> Iterator[bytes]:
        if self.cipher_type != "none":
            self.load_archive_info()
            chunks = crypto.decrypt(chunks, self._key)
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

    # -- WAL -------------------------------------------------------------------

    def find_wal(self, archive_id: str, name: str) -> list[str]:
        """Stored file names of WAL file ``name`` in ``archive_id`` (normally zero or one)."""
        directory = self.wal_dir(archive_id, name)
        if wal.kind(name) == "history":
            return [f.name for f in self.storage.list(directory) if f.name == name]
        return [f.name for f in self.storage.list(directory) if f.name.startswith(name + "-") and ARCHIVED_RE.fullmatch(f.name)]

    def push_wal(self, name: str, data: bytes) -> str | None:
        """Archive one WAL file given as bytes; see :meth:`push_wal_file`."""
        return self._push(name, data[:8192], len(data), sha1_hex(data), lambda: iter([data]), lambda: data)

    def push_wal_file(self, name: str, path: str) -> str | None:
        """Archive the WAL file at ``path``, streamed: a worker never holds a whole segment in memory.

        One pass computes the SHA-1 (it names the file), a second streams it through compression
        to the repository while hashing again; a file that changed in between is removed and refused.
        """
        if wal.kind(name) in ("history", "backup"):
            with open(path, "rb") as fh:
                return self.push_wal(name, fh.read())
        size = os.stat(path).st_size
        digest = hashlib.sha1()
        with open(path, "rb") as fh:
            head = fh.read(8192)
            digest.update(head)
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        sent = hashlib.sha1()
        streamed = []

        def chunks():
            streamed.append(True)
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    sent.update(chunk)
                    yield chunk

        def whole() -> bytes:
            with open(path, "rb") as fh:
                return fh.read()

        warning = self._push(name, head, size, digest.hexdigest(), chunks, whole)
        if streamed and sent.hexdigest() != digest.hexdigest():  # stored now: a new copy or a repair
            self.storage.delete(f"{self.wal_dir(self.archive_id(), name)}/{name}-{digest.hexdigest()}{self.extension()}")
            raise FormatError(f"WAL file '{name}' changed while it was being archived")
        return warning

    def _push(self, name: str, head: bytes, size: int, digest: str, chunks, whole) -> str | None:
        """Archive one WAL file; returns a warning (duplicate) or None.

        The header of a segment is checked against the stanza before anything
        is written; a duplicate with the same SHA-1 succeeds once a stored copy
        reads back whole (a damaged one is replaced), a different one is error 45
        and nothing is replaced.
        """
        kind = wal.kind(name)
        if kind in ("segment", "partial"):
            if not size:
                raise FormatError(f"WAL file '{name}' is empty")
            header = wal.parse_header(head, name)
            wal.check_header_matches_name(header, name)
            if size != header.segment_size:
                raise FormatError(f"WAL file '{name}' has size {size} but its header says the segment size is "
                                  f"{header.segment_size}")
            self.check_cluster(header.system_id, header.version, f"WAL file '{name}'")
        else:
            self.load_archive_info()
            if kind == "history" and (problem := history_problem(name, whole())):
                raise FormatError(problem)
        archive_id = self.archive_id()
        directory = self.wal_dir(archive_id, name)
        for _attempt in range(2):
            existing = self.find_wal(archive_id, name)
            if existing:
                warning = self._duplicate(name, digest, directory, existing)
                if kind == "history":
                    return warning
                # a writer killed between its rename and the removal of its temporary name
                self.storage.remove_leftovers(f"{directory}/{name}-{digest}{self.extension()}")
                return self._check_stored_copies(name, size, digest, directory, existing, chunks) or warning
            if kind == "history":
                target, payload = f"{directory}/{name}", self.encode([whole()], "none")
            else:
                # read + compress in a thread while the storage sends: both cores at work
                target, payload = f"{directory}/{name}-{digest}{self.extension()}", readahead.ahead(self.encode(chunks()))
                self.storage.remove_leftovers(target)  # what earlier attempts killed mid-file left
            try:
                self.storage.put(target, payload)
            except FileExistsError:
                continue  # pushed concurrently: compare with what is there now
            if kind != "history":
                self._check_no_rival(name, digest, directory, target)
            return None
        raise FileReadError(f"WAL file '{name}': '{target}' exists in the repository but is not a file it lists "
                            "(a directory or a link?)\nHINT: remove it from the repository")

    def _check_no_rival(self, name: str, digest: str, directory: str, target: str) -> None:
        """Look again after the put: a concurrent push of other content under the same name loses both ways.

        The check before the put cannot see a push running at the same moment (the names differ
        by their SHA-1).  Listing after our own put closes it: of two racers, the one that lists
        second always sees the first's file unless the first already removed it, so at most one
        content is ever acknowledged; each one that sees a rival removes its own copy and fails.
        """
        rivals = stored_checksums(self.find_wal(self.archive_id(), name)) - {digest}
        if not rivals:
            return
        self.storage.delete(target)
        raise ArchiveDuplicateError(
            f"WAL file '{name}' already exists in the archive with a different checksum: archived SHA1 "
            f"{', '.join(sorted(rivals))}, new SHA1 {digest} (pushed concurrently; this copy was removed)")

    def _duplicate(self, name: str, digest: str, directory: str, existing: list[str]) -> str:
        stored = existing[0]
        if wal.kind(name) == "history":
            old = self.read_verified(f"{directory}/{stored}", None, f"history file '{name}'")
            old_digest = sha1_hex(old)
        else:
            checksums = stored_checksums(existing)
            if len(checksums) > 1:
                raise conflict_error(name, checksums)
            old_digest = ARCHIVED_RE.fullmatch(stored).group("sha")
        if old_digest != digest:
            raise ArchiveDuplicateError(
                f"WAL file '{name}' already exists in the archive with a different checksum: archived SHA1 "
                f"{old_digest}, new SHA1 {digest}")
        return (f"WAL file '{name}' already exists in the archive with the same checksum\n"
                "HINT: this is valid in some recovery scenarios but may also indicate a problem.")

    def _check_stored_copies(self, name: str, size: int, digest: str, directory: str, existing: list[str],
                             chunks) -> str | None:
        """A duplicate is acknowledged only when a stored copy is whole: else PostgreSQL recycles its only good one.

        Each stored copy with the same SHA-1 is read back and decoded (one read of the stored copy
        per duplicate push): a copy cut short by a lost write, or damaged on the backup host, is
        replaced by this one.  The good copy is written under a temporary name and renamed over
        the final one (``put`` with ``overwrite``), so a concurrent ``get`` always finds a file;
        damaged copies under other names (another compression type) are removed after.  A copy
        that cannot be read (the host is down) raises: the push fails rather than acknowledges.
        Returns the warning naming the damage, or None when every copy is whole.
        """
        damaged = {stored: problem for stored in existing
                   if (problem := self._stored_copy_problem(name, f"{directory}/{stored}", digest, size))}
        if not damaged:
            return None
        target = f"{directory}/{name}-{digest}{self.extension()}"
        rewrite = len(damaged) == len(existing) or target in (f"{directory}/{f}" for f in damaged)
        if rewrite:
            self.storage.put(target, readahead.ahead(self.encode(chunks())), overwrite=True)
            self._check_no_rival(name, digest, directory, target)
        for stored in damaged:
            if f"{directory}/{stored}" != target:
                self.storage.delete(f"{directory}/{stored}")
        done = "replaced by this one" if rewrite else "removed (a whole copy remains)"
        return (f"WAL file '{name}' already exists in the archive with the same checksum, but the stored copy was "
                f"damaged ({'; '.join(damaged.values())}): {done}")

    def _stored_copy_problem(self, name: str, path: str, digest: str, size: int) -> str | None:
        """Why the stored copy at ``path`` is not a whole copy of the ``size`` bytes with SHA-1 ``digest``; None if it is."""
        counter = _ByteCounter()
        try:
            self._stream_verified(name, path, digest, counter)
        except FileNotFoundError:
            return f"'{path}' vanished"
        except FileReadError as exc:
            return str(exc)
        if counter.size != size:
            return f"'{path}' decodes to {counter.size} bytes, not {size}"
        return None

    def get_wal(self, name: str) -> bytes:
        """The verified content of WAL file ``name``; :class:`WalNotFound` when absent."""
        for archive_id in self.archive_ids():
            found = self.find_wal(archive_id, name)
            if not found:
                continue
            stored = found[0]
            path = f"{self.wal_dir(archive_id, name)}/{stored}"
            if wal.kind(name) == "history":
                data = self.read_verified(path, None, f"WAL file '{name}'")
                if problem := history_problem(name, data):
                    raise FileReadError(f"{problem} (in the repository)")
                return data
            self._refuse_conflict(name, found)
            sha = ARCHIVED_RE.fullmatch(stored).group("sha")
            return self.read_verified(path, sha, f"WAL file '{name}'")
        raise WalNotFound(name)

    @staticmethod
    def _refuse_conflict(name: str, found: list[str]) -> None:
        """Never pick one of two contents stored under one WAL name (error 45, not a guess)."""
        checksums = stored_checksums(found)
        if len(checksums) > 1:
            raise conflict_error(name, checksums)

    def get_wal_into(self, name: str, fh) -> None:
        """Write the content of WAL file ``name`` into ``fh``, streamed, and verify its SHA-1 at the end.

        The caller writes to a temporary name and renames only when this returns: a corrupt
        file raises :class:`FileReadError` and must never reach its destination.
        """
        for archive_id in self.archive_ids():
            found = self.find_wal(archive_id, name)
            if not found:
                continue
            if wal.kind(name) == "history":
                fh.write(self.get_wal(name))
                return
            self._refuse_conflict(name, found)
            stored = found[0]
            path = f"{self.wal_dir(archive_id, name)}/{stored}"
            self._stream_verified(name, path, ARCHIVED_RE.fullmatch(stored).group("sha"), fh)
            return
        raise WalNotFound(name)

    def _stream_verified(self, name: str, path: str, expected: str, fh) -> None:
        """Decode ``path`` into ``fh``, never past the segment size its header gives (a hostile
        repository's decompression bomb must not fill ``pg_wal``), then check the SHA-1."""
        what = f"WAL file '{name}'"
        digest = hashlib.sha1()
        segment = wal.kind(name) in ("segment", "partial")
        limit, head, written = MAX_WAL_BYTES, b"", 0
        try:
            for chunk in self.decode_bounded(path, what):
                if segment and len(head) < HEADER_SIZE:
                    head += chunk[: HEADER_SIZE - len(head)]
                    if len(head) == HEADER_SIZE:
                        limit = _segment_size(name, head)
                written += len(chunk)
                if written > limit:
                    raise FileReadError(f"{what} in the repository is corrupt: it decodes to more than its "
                                        f"segment size ({limit} bytes)")
                digest.update(chunk)
                fh.write(chunk)
        except ValueError as exc:
            raise FileReadError(f"{what} in the repository is corrupt: {exc}") from None
        if digest.hexdigest() != expected:
            raise FileReadError(f"{what} in the repository is corrupt: SHA1 {digest.hexdigest()} "
                                f"does not match the expected {expected}")

    def record_dropped(self, name: str, reason: str) -> None:
        """Leave a marker for a segment acknowledged without being archived."""
        archive_id = self.archive_id()
        marker = f"{self.wal_dir(archive_id, name)}/{name}{DROPPED_SUFFIX}"
        body = json.dumps({"wal": name, "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        try:
            self.storage.put(marker, [body.encode()])
        except FileExistsError:
            pass

    def list_archive(self, archive_id: str | None = None) -> tuple[dict[str, str], set[str]]:
        """All archived segments ``{name: stored file}`` and dropped markers of an archive id."""
        archive_id = archive_id or self.archive_id()
        base = f"{self.archive_root}/{archive_id}"
        segments: dict[str, str] = {}
        dropped: set[str] = set()
        for directory in sorted(self.storage.list_dirs(base)):
            if not re.match(r"^[0-9A-F]{16}$", directory):
                continue
            for f in self.storage.list(f"{base}/{directory}"):
                m = ARCHIVED_RE.fullmatch(f.name)
                if m and len(m.group("wal")) == 24:
                    segments[m.group("wal")] = f.name
                elif f.name.endswith(DROPPED_SUFFIX):
                    dropped.add(f.name[: -len(DROPPED_SUFFIX)])
        return segments, dropped
