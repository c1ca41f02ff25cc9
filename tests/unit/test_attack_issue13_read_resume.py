"""A read resumed after a lost connection, against a file replaced meanwhile (issue #13's attack).

The retry layer (pgpush/storage/retry.py) reads the file again from its start and skips the
bytes it has delivered.  It checked only that the last chunk delivered read the same: a
replacement that differs *before* that chunk was spliced onto the old content, which is
neither version.  Every byte skipped must read the same.
"""

from __future__ import annotations

import pytest
from test_storage_retry import Fake

from pgpush.storage.base import StorageError
from pgpush.storage.retry import Policy, RetryingStorage


def _resumed_against(old: bytes, new: bytes, chunk: int, fail_after: int) -> bytes:
    fake = Fake()
    fake.chunk = chunk
    fake.files["f"] = old
    fake.fail_after_chunks = fail_after
    storage = RetryingStorage(fake, Policy(10.0, sleep=lambda _s: fake.files.update(f=new), clock=lambda: 0.0))
    return b"".join(storage.read_chunks("f"))


def test_a_replacement_that_differs_before_the_last_chunk_delivered_is_not_spliced() -> None:
    with pytest.raises(StorageError, match="changed while it was being read again"):
        _resumed_against(b"AAAABBBBCCCCEEEE", b"XXXXBBBBCCCCDDDD", 4, 3)


@pytest.mark.parametrize("chunk", [1, 3, 4, 5, 16])
def test_an_unchanged_file_resumes_whole_whatever_the_chunk_size(chunk: int) -> None:
    data = bytes(range(40))
    assert _resumed_against(data, data, chunk, 2) == data


def test_a_file_replaced_by_one_with_the_same_start_goes_on_with_the_new_end() -> None:
    # the bytes delivered are the same in both: what follows is the file as it is now
    assert _resumed_against(b"AAAABBBBCCCC", b"AAAABBBBDDDDEEEE", 4, 2) == b"AAAABBBBDDDDEEEE"
