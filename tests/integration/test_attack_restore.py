"""Attacks on restore from a repository that lies about a file's content (a decompression bomb).

The manifest says PG_VERSION is 3 bytes; the stored file decodes to gigabytes of zeros.  Restore
must find it longer than the manifest says while it decodes, never hold (or write) the whole of it:
under an address-space limit far below the bomb, it fails with one "corrupt" error (42).
"""

from __future__ import annotations

import re

import pytest
import zstandard
from backup_env import backup, setup_archiving
from harness import procs
from harness.tmpfs import tmpfs
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration

BOMB_BYTES = 4 << 30  # decoded size: far above the limit below
ADDRESS_SPACE = 3 << 30  # bytes restore may map: what the interpreter, its threads and libraries need, with room


def _bomb(size: int = BOMB_BYTES) -> bytes:
    out = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = bytes(64 << 20)
    return b"".join([out.compress(zeros) for _ in range(size // len(zeros))] + [out.flush()])


def test_restore_refuses_a_stored_file_that_decodes_past_its_manifest_size_without_holding_it(
        pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    setup_archiving(pp, pg)
    label, _ = backup(pp, pg, "--wait", "--wait-timeout=60")
    stored = work_dir / "repo" / "backup" / pp.stanza / label / "pg_data" / "PG_VERSION.zst"
    assert stored.exists()
    stored.write_bytes(_bomb())
    target = procs.make_tmp_dir(work_dir, "box") / "data"
    procs.chown_tree(target.parent, "postgres")

    pp.cmd = ["prlimit", f"--as={ADDRESS_SPACE}", "--", *pp.cmd]
    res = pp.run("restore", f"--pg1-path={target}", timeout=300)

    assert res.returncode == 42, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    errors = re.findall(r"^ERROR: \[\d{3}\]: .*$", res.stderr, re.M)
    assert len(errors) == 1 and "decodes to more than the manifest's 3 bytes" in errors[0], res.stderr


def test_restore_stops_writing_a_big_file_at_its_manifest_size_when_it_decodes_longer(pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    setup_archiving(pp, pg)
    pg.sql("create table big as select repeat(md5(i::text), 4) as t from generate_series(1, 30000) i")
    relation = pg.sql("select pg_relation_filepath('big')")  # ~4 MB: restored streamed, not in a batch
    label, _ = backup(pp, pg, "--wait", "--wait-timeout=60")
    stored = work_dir / "repo" / "backup" / pp.stanza / label / "pg_data" / f"{relation}.zst"
    assert stored.exists()
    stored.write_bytes(_bomb(1 << 30))
    target = procs.make_tmp_dir(work_dir, "box") / "data"
    procs.chown_tree(target.parent, "postgres")

    with tmpfs(target, 256, owner="postgres", mode=0o700):  # room for the cluster, not for the bomb
        res = pp.run("restore", f"--pg1-path={target}", timeout=300)

    assert res.returncode == 42, (res.returncode, res.stderr)
    errors = re.findall(r"^ERROR: \[\d{3}\]: .*$", res.stderr, re.M)
    assert len(errors) == 1 and "decodes to more than the manifest's" in errors[0], res.stderr
