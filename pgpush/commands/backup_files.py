"""The worker side of ``backup``: store one file of the data directory in every repository.

With one repository a file is read, compressed, encrypted and sent in one stream
(:func:`backup_file`).  With several the data directory is still read once
(docs/architecture.md, "One backup, every repository"): :func:`backup_everywhere` reads
each file a single time and tees its bytes to one encoder and writer per repository, each
in its own thread (a :class:`_Sink`), so each copy gets its repository's own compression
and cipher, the slowest repository sets the pace, and a repository that fails (its store
down, full or frozen: its writes fail within ``repoN-host-timeout``) loses only its own
copy: the reader stops feeding it and goes on for the others.  A source file that cannot
be read fails the backup in every repository, as with one.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import traceback
from collections.abc import Iterator, Mapping
from typing import Union

from pgpush.errors import PgPushError, UnexpectedError
from pgpush.log import LOG
from pgpush.repo import readahead
from pgpush.repo.records import ManifestFile
from pgpush.repo.repository import Repository
from pgpush.storage.base import CHUNK, StorageError

DEPTH = 4  # chunks a writer may lag behind the reader before the reader waits for it
Failure = tuple  # (code, message): a PgPushError's class does not cross the worker's pipe
Outcome = Union[ManifestFile, Failure]
# (manifest name, absolute path, {repository index: (label dir, prior entry or None)})
Job = tuple  # tuple[str, str, dict[int, tuple[str, ManifestFile | None]]]


def sha1_file(path: str) -> tuple[str, int]:
    h = hashlib.sha1()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _reference(name: str, digest: str, size: int, prior: ManifestFile) -> ManifestFile:
    return {"name": name, "size": size, "sha1": digest, "ext": prior["ext"], "repo_size": prior["repo_size"],
            "reference": prior["reference"]}


def backup_file(repo: Repository, job: tuple[str, str, str, ManifestFile | None]) -> ManifestFile | None:
    """Store one file (or reference the prior backup's copy); None when it vanished meanwhile.

    ``job`` = (manifest name, absolute path, label dir, prior entry or None).
    The SHA-1 recorded is of the bytes actually stored.  Only the source file vanishing
    means None: a "no such file" from the repository's side (a directory of the backup
    removed, a file where a directory should be) fails the backup, never drops the file.
    """
    name, path, label_dir, prior = job
    try:
        size = os.stat(path).st_size
        if prior is not None and prior["size"] == size:
            digest, read = sha1_file(path)
            if digest == prior["sha1"] and read == size:
                return _reference(name, digest, read, prior)
    except FileNotFoundError:
        return None  # removed while backed up (a dropped relation): WAL replay recreates what matters
    h = hashlib.sha1()
    counted = [0]
    vanished = [False]

    def chunks() -> Iterator[bytes]:
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            vanished[0] = True
            raise
        with fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
                counted[0] += len(chunk)
                yield chunk

    ext = repo.extension()
    payload = repo.encode(chunks())
    if size > CHUNK:  # big file: compress in a thread while the storage sends
        payload = readahead.ahead(payload)
    target = f"{label_dir}/{name}{ext}"
    try:
        written = repo.storage.put(target, payload, overwrite=True)
    except Exception as exc:
        if vanished[0]:
            return None  # removed between the stat and the open (the storage may have wrapped the error)
        if isinstance(exc, FileNotFoundError):
            raise _unable_to_write(target, exc, repo) from None
        raise
    return {"name": name, "size": counted[0], "sha1": h.hexdigest(), "ext": ext, "repo_size": written, "reference": None}


def _unable_to_write(target: str, exc: OSError, repo: Repository) -> StorageError:
    return StorageError(f"unable to write '{target}': {exc} ({repo.storage.description})")


def backup_everywhere(repos: Mapping[int, Repository], job: Job) -> dict[int, Outcome] | None:
    """Store one file in every repository of ``job``; None when the source vanished meanwhile.

    Returns ``{index: manifest entry}``, or ``{index: (code, message)}`` for a repository
    whose copy failed (its error, for the parent to give up that repository).  A failure to
    read the source is raised: it is no repository's fault.
    """
    name, path, targets = job
    if len(targets) == 1:  # one repository: the single stream, exactly as with one configured
        ((index, (label_dir, prior)),) = targets.items()
        try:
            stored = backup_file(repos[index], (name, path, label_dir, prior))
        except PgPushError as exc:
            return {index: (exc.code, exc.message)}
        return None if stored is None else {index: stored}
    results: dict[int, Outcome] = {}
    try:
        size = os.stat(path).st_size
        same = {i: p for i, (_, p) in targets.items() if p is not None and p["size"] == size}
        if same:  # one read to compare with the priors that may still hold this content
            digest, read = sha1_file(path)
            for index, prior in same.items():
                if digest == prior["sha1"] and read == size:
                    results[index] = _reference(name, digest, read, prior)
    except FileNotFoundError:
        return None
    todo = {i: label_dir for i, (label_dir, _) in targets.items() if i not in results}
    if todo:
        copies = _tee(repos, name, path, todo)
        if copies is None:
            return None
        results.update(copies)
    return results


class _Abort(Exception):
    """Fed to a writer when the read failed: its put stops and leaves no file under the name."""


_END = object()


class _Sink:
    """One repository's writer: encodes and puts what the reader feeds it, in a thread of its own."""

    def __init__(self, repo: Repository, target: str):
        self.repo = repo
        self.target = target
        self.queue: queue.Queue = queue.Queue(DEPTH)
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.written = 0
        self.thread = threading.Thread(target=self._run, name=f"pgpush-{repo.label}", daemon=True)
        self.thread.start()

    def _chunks(self) -> Iterator[bytes]:
        while True:
            item = self.queue.get()
            if item is _END:
                return
            if isinstance(item, _Abort):
                raise item
            yield item

    def _run(self) -> None:
        try:
            self.written = self.repo.storage.put(self.target, self.repo.encode(self._chunks()), overwrite=True)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which reports it for this repository
            self.error = exc
        finally:
            self.done.set()

    def feed(self, item: object) -> bool:
        """Hand ``item`` over; False when this writer has ended (failed): it is fed no more."""
        while not self.done.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def outcome(self, name: str, size: int, digest: str) -> Outcome:
        exc = self.error
        if exc is None:
            return {"name": name, "size": size, "sha1": digest, "ext": self.repo.extension(),
                    "repo_size": self.written, "reference": None}
        if isinstance(exc, PgPushError):
            return (exc.code, exc.message)
        if isinstance(exc, FileNotFoundError):
            failed = _unable_to_write(self.target, exc, self.repo)
            return (failed.code, failed.message)
        LOG.debug("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return (UnexpectedError.code, f"{type(exc).__name__}: {exc}")


def _tee(repos: Mapping[int, Repository], name: str, path: str, todo: dict[int, str]) -> dict[int, Outcome] | None:
    """Read ``path`` once into one :class:`_Sink` per repository of ``todo`` (index -> label dir)."""
    sinks = {i: _Sink(repos[i], f"{label_dir}/{name}{repos[i].extension()}") for i, label_dir in todo.items()}
    h = hashlib.sha1()
    size = 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
                if not any([s.feed(chunk) for s in sinks.values() if not s.done.is_set()]):  # a list: feed every one
                    break  # every writer failed: reading on serves nobody
        for sink in sinks.values():
            sink.feed(_END)
    except BaseException as exc:
        for sink in sinks.values():
            sink.feed(_Abort(str(exc)))
        for sink in sinks.values():
            sink.thread.join()
        if isinstance(exc, FileNotFoundError):
            return None  # removed between the stat and the open
        raise
    for sink in sinks.values():
        sink.thread.join()
    digest = h.hexdigest()
    return {i: sink.outcome(name, size, digest) for i, sink in sinks.items()}
