"""Storage.read_many on every backend: the batched reader restore uses for small files.

posix and s3 use the base class's one-by-one default; sftp keeps many files in flight on one
connection and trusts the size hint only to skip the read that would find the end.  Every
backend must return each file's whole content, in the order asked, whatever the hint says,
and raise FileNotFoundError naming a missing file when its turn comes, the storage object
working again afterwards.
"""

from __future__ import annotations

import pytest
import test_storage_contract as contract
from test_storage_contract import chunks, payload

from pgpush.storage.base import Storage

backend = contract.backend  # the fixtures: posix, sftp and s3
storage = contract.storage


def _plant_files(storage: Storage, n: int) -> dict[str, bytes]:
    sizes = [0, 1, 100, 8192, 32_768, 32_769, 261_120, 261_121, 600_000, 1_500_000]
    files = {}
    for i in range(n):
        name = f"d/f{i:03d}"
        files[name] = payload(sizes[i % len(sizes)], name)
        storage.put(name, chunks(files[name], 100_000))
    return files


def test_read_many_whole_files_in_order_whatever_the_hint(storage: Storage) -> None:
    files = _plant_files(storage, 80)  # more than sftp's window of files in flight
    names = sorted(files)
    hints = {
        "exact": lambda d: len(d),
        "none": lambda d: None,
        "too small": lambda d: max(0, len(d) - 1000),
        "too big": lambda d: len(d) + 1000,
        "zero": lambda d: 0,
    }
    for how, hint in hints.items():
        got = list(storage.read_many((n, hint(files[n])) for n in names))
        assert [n for n, _ in got] == names, how
        bad = [n for n, data in got if data != files[n]]
        assert not bad, f"hint {how}: wrong content for {bad}"
    assert list(storage.read_many([])) == []
    # The connection is clean afterwards: ordinary calls work on it.
    assert storage.read(names[3]) == files[names[3]]


def test_read_many_missing_file(storage: Storage) -> None:
    files = _plant_files(storage, 40)
    names = sorted(files)
    asked = [*((n, len(files[n])) for n in names[:5]), ("d/missing", 10), *((n, len(files[n])) for n in names[5:])]
    got = []
    with pytest.raises(FileNotFoundError) as info:
        for name, data in storage.read_many(asked):
            got.append((name, data))
    assert info.value.filename == "d/missing"
    assert got == [(n, files[n]) for n in names[:5]]
    # The same object works again (sftp dropped the connection with requests in flight).
    assert dict(storage.read_many((n, len(files[n])) for n in names)) == files
    assert storage.read(names[0]) == files[names[0]]


def test_read_many_stopped_early(storage: Storage) -> None:
    files = _plant_files(storage, 50)
    names = sorted(files)
    it = storage.read_many((n, len(files[n])) for n in names)
    assert next(it) == (names[0], files[names[0]])
    it.close()  # requests still in flight on sftp
    assert list(storage.read_many([(names[-1], None)])) == [(names[-1], files[names[-1]])]
    storage.put("d/after", [b"still writable"])
    assert storage.read("d/after") == b"still writable"
