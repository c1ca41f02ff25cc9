"""A WAL file that vanishes from the repository between get's lookup and its read (issue #13's attack).

``get`` lists the archive, then reads the copy it found.  A concurrent ``expire``, or a push
replacing a damaged copy stored under another compression type, may remove that copy in
between; so may a retry of the read after a lost connection (pgpush/storage/retry.py passes a
missing file through).  The repository's "no such file" then reached fetch_to's handler for the
local destination and was reported as ``[047]: unable to write '<pg_wal path>'``: the operator
was sent to look at the wrong host.  It is the repository's file that is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pgpush.archive import core
from pgpush.errors import FileMissingError, PathCreateError
from pgpush.repo.repository import Repository
from pgpush.repo.walarchive import push_wal
from pgpush.storage.posix import PosixStorage

NAME = "000000010000000000000003.00000028.backup"  # any bytes make a valid backup history file


class VanishingStorage(PosixStorage):
    """Removes a file right before it is read, as a concurrent expire would."""

    def read_chunks(self, name):
        if NAME in name:
            self.delete(name)
        return super().read_chunks(name)


def test_a_wal_file_removed_between_lookup_and_read_is_a_missing_repository_file(tmp_path: Path) -> None:
    repo = Repository(VanishingStorage(str(tmp_path / "repo")), "main", compress_type="none")
    repo.stanza_create(7000000000000000001, 15)
    push_wal(repo, NAME, b"START WAL LOCATION: 0/3000028\n")
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    dest.parent.mkdir()
    with pytest.raises(FileMissingError) as err:
        core.fetch_to(repo, NAME, str(dest))
    assert not isinstance(err.value, PathCreateError)
    assert str(dest) not in str(err.value) and NAME in str(err.value)
    assert list(dest.parent.iterdir()) == []  # nothing left in pg_wal
