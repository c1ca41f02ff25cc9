"""restore's work plan (big files alone and largest first, small ones in bounded batches) and its
durability step (syncfs, or an fsync of every file and directory where syncfs does not exist)."""

from __future__ import annotations

import os

import pytest

from pgpush.commands.restore import durability, files, recovery, remap
from pgpush.commands.restore.files import FileJob


def _job(name: str, size: int, repo_size: int | None) -> FileJob:
    return FileJob(name, "/nowhere", (name,), f"repo/{name}", "0" * 40, size, 0o600, 0.0, None, None, False, repo_size)


def test_plan_big_files_alone_largest_first_then_batches():
    jobs = [_job(f"small{i}", 8192, 500) for i in range(150)]
    jobs += [_job("seg", 1 << 30, 50 << 20), _job("idx", 64 << 20, 9 << 20), _job("no-repo-size", 100, None),
             _job("compressible", 100 << 20, 200 << 10), _job("medium", 2 << 20, 2 << 20)]
    units = files.plan(jobs)
    singles = [u[0].name for u in units if len(u) == 1 and not files._small(u[0])]
    assert singles == ["seg", "compressible", "idx", "medium", "no-repo-size"]
    assert [len(u) for u in units[:5]] == [1] * 5
    batches = units[5:]
    assert all(files._small(j) for u in batches for j in u)
    assert all(len(u) <= files.BATCH_FILES for u in batches)
    assert sorted(j.name for u in units for j in u) == sorted(j.name for j in jobs)


def test_plan_batches_bounded_in_bytes():
    jobs = [_job(f"f{i}", 1536 << 10, 900 << 10) for i in range(30)]
    units = files.plan(jobs)
    assert all(sum(j.size for j in u) <= files.BATCH_BYTES for u in units)
    assert all(len(u) > 1 for u in units[:-1]) and sum(len(u) for u in units) == 30


def _tree(root):
    (root / "base" / "1").mkdir(parents=True)
    for name in ("PG_VERSION", "base/1/1259", "base/1/1259_fsm"):
        (root / name).write_bytes(b"x" * 100)
    os.symlink("/nonexistent", root / "link")  # a tablespace link: not followed, not fsynced
    return {str(root / n) for n in ("PG_VERSION", "base/1/1259", "base/1/1259_fsm")}, \
        {str(root), str(root / "base"), str(root / "base" / "1"), str(root.parent)}


def test_make_durable_falls_back_to_fsync_of_everything(tmp_path, monkeypatch):
    root = tmp_path / "pgdata"
    root.mkdir()
    files, dirs = _tree(root)
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(durability, "_syncfs", lambda path: False)
    monkeypatch.setattr(os, "fsync", fsync)
    durability.make_durable([str(root)])
    assert set(synced) == files | dirs


def test_make_durable_one_syncfs_per_file_system(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    calls = []
    real = durability._syncfs

    def syncfs(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(durability, "_syncfs", syncfs)
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("fsync called although syncfs exists"))
    durability.make_durable([str(a), str(b)])  # same file system: one call
    assert calls == [str(a)]


def test_syncfs_error_is_raised(tmp_path, monkeypatch):
    import ctypes
    import errno

    class Libc:
        @staticmethod
        def syncfs(fd):
            ctypes.set_errno(errno.EIO)
            return -1

    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: Libc())
    with pytest.raises(OSError) as info:
        durability._syncfs(str(tmp_path))
    assert info.value.errno == errno.EIO


def test_start_writeback_is_only_a_hint(tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 100_000)
        durability.start_writeback(fd, 0, 100_000)  # Linux: sync_file_range; elsewhere nothing
        durability.start_writeback(fd, 50_000, 10**12)  # past the end: no error either
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * 100_000


class _Cfg(dict):
    def get(self, key, default=None):
        return super().get(key, default)


def _manifest_with_links(*oids: str) -> dict:
    return {"links": [{"name": f"pg_data/pg_tblspc/{oid}", "destination": f"/old/{oid}"} for oid in oids]}


def test_tablespace_map_all_and_one_override():
    manifest = _manifest_with_links("16390", "16391")
    remapped = remap.remap_tablespaces(_Cfg({"tablespace-map-all": "/new", "tablespace-map": "16391=/other/x/"}),
                                       manifest)
    assert remapped == {"16390": "/new/16390", "16391": "/other/x"}
    assert [ln["destination"] for ln in manifest["links"]] == ["/new/16390", "/other/x"]
    assert remap.remap_tablespaces(_Cfg(), _manifest_with_links("1")) == {}


@pytest.mark.parametrize("value", ["16390", "16390=", "16390=rel", "x=/abs", "1=/abs", "16390=/a\nb"])
def test_tablespace_map_refuses_bad_values(value):
    from pgpush.errors import OptionInvalidValueError

    with pytest.raises(OptionInvalidValueError):
        remap.remap_tablespaces(_Cfg({"tablespace-map": value}), _manifest_with_links("16390"))


def test_tablespace_map_file_rewritten_for_remapped_entries_only(tmp_path):
    (tmp_path / "tablespace_map").write_text("16390 /old/a\n16391 /old/b\n")
    os.chmod(tmp_path / "tablespace_map", 0o600)
    remap.rewrite_tablespace_map(str(tmp_path), {"16391": "/new/with\\backslash"})
    assert (tmp_path / "tablespace_map").read_text() == "16390 /old/a\n16391 /new/with\\\\backslash\n"
    assert os.stat(tmp_path / "tablespace_map").st_mode & 0o777 == 0o600


def test_tablespace_map_never_written_through_a_link_left_at_the_temporary_name(tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("keep")
    (tmp_path / "tablespace_map").write_text("16390 /old/a\n")
    os.chmod(tmp_path / "tablespace_map", 0o640)
    os.symlink(outside, tmp_path / "tablespace_map.pgpush.tmp")
    remap.rewrite_tablespace_map(str(tmp_path), {"16390": "/new/a"})
    assert outside.read_text() == "keep"
    assert (tmp_path / "tablespace_map").read_text() == "16390 /new/a\n"
    assert os.stat(tmp_path / "tablespace_map").st_mode & 0o777 == 0o640  # the restored file's mode is kept
    assert not os.path.lexists(tmp_path / "tablespace_map.pgpush.tmp")


def test_recovery_settings_never_write_through_a_link_left_at_the_temporary_name(tmp_path):
    pgdata, outside = tmp_path / "data", tmp_path / "outside"
    pgdata.mkdir()
    outside.write_text("keep")
    os.symlink(outside, pgdata / "postgresql.auto.conf.pgpush.tmp")
    recovery.write(str(pgdata), 15, "default", [("restore_command", "true")], None, None)
    assert outside.read_text() == "keep"
    assert "restore_command = 'true'" in (pgdata / "postgresql.auto.conf").read_text()
    assert not os.path.lexists(pgdata / "postgresql.auto.conf.pgpush.tmp")
