"""Synchronous push and get with PostgreSQL as the client, over SFTP and posix."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from harness import procs
from harness.pg import PG_MAJORS, bin_dir_for
from pgpush_env import Pgpush, archived_files, sha1_file

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("major", PG_MAJORS)
def test_pgbench_archives_every_segment_over_sftp_and_pitr_restore(pg_factory, sshd, pgpush_cmd, work_dir, major):
    pp = Pgpush(pgpush_cmd, work_dir, repo=sshd.pgpush_options())
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": "", "wal_keep_size": "1GB"},
                    bin_dir=bin_dir_for(major))
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command()})
    pg.reload()
    pg.pgbench_init(scale=1)
    base = work_dir / "base"
    pg.run([pg.bin("pg_basebackup"), "-D", str(base), "-X", "none", "-c", "fast", "-h", str(pg.socket_dir),
            "-p", str(pg.port), "-U", "postgres"], check=True)
    pg.sql("create table marks(id int, at timestamptz default clock_timestamp())")
    pg.pgbench(transactions=200, clients=2)
    pg.sql("insert into marks values (1)")
    time.sleep(1.1)
    target = pg.sql("select clock_timestamp()")
    time.sleep(1.1)
    pg.sql("insert into marks values (2)")
    last = pg.switch_wal()
    pg.wait_archived(last, timeout=60)

    archived = archived_files(sshd.repo_dir)
    for name, sha in archived.items():
        local = pg.wal_dir / name
        if local.exists():
            assert sha1_file(local) == sha, name
    assert last in archived

    restored = pg_factory("restored", init=False, bin_dir=bin_dir_for(major))
    restored._prepare_common()
    os.rename(base, restored.datadir)
    restored.set_conf({
        "port": restored.port, "unix_socket_directories": str(restored.socket_dir), "archive_mode": "off",
        "restore_command": pp.restore_command(), "recovery_target_time": target,
        "recovery_target_action": "promote",
    })
    (restored.datadir / "recovery.signal").touch()
    restored.start(timeout=120)
    deadline = time.time() + 120
    while restored.sql("select pg_is_in_recovery()") == "t" and time.time() < deadline:
        time.sleep(0.5)
    assert restored.sql("select array_agg(id order by id) from marks") == "{1}"


@pytest.mark.parametrize("compress", ["none", "gz", "zst", "lz4"])
def test_push_get_roundtrip_each_compression(pg_cluster, pgpush_cmd, work_dir, compress):
    pp = Pgpush(pgpush_cmd, work_dir, compress_type=compress)
    pp.stanza_create(pg_cluster)
    seg = pg_cluster.generate_wal(1)[0]
    wal = pg_cluster.wal_dir / seg
    res = pp.run("push", str(wal))
    assert res.returncode == 0, res.stderr
    dest = work_dir / "out.wal"
    res = pp.run("get", seg, str(dest))
    assert res.returncode == 0, res.stderr
    assert dest.read_bytes() == wal.read_bytes()
    stored = next((work_dir / "repo" / "archive" / "main").glob(f"*/*/{seg}-*"))
    # the name is SEGMENT-SHA1 of the WAL, then the type's extension: none for "none"
    extension, magic = {"none": ("", b""), "gz": (".gz", b"\x1f\x8b"), "zst": (".zst", b"\x28\xb5\x2f\xfd"),
                        "lz4": (".lz4", b"\x04\x22\x4d\x18")}[compress]
    assert stored.name == f"{seg}-{sha1_file(wal)}{extension}"
    if compress == "none":
        assert stored.read_bytes() == wal.read_bytes()  # stored as is
    else:
        assert stored.read_bytes()[:len(magic)] == magic  # a frame of that type
    assert oct(stored.stat().st_mode & 0o777) == "0o640"


def test_encrypted_repo_roundtrip_and_wrong_passphrase(pg_cluster, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir, repo1_cipher_type="aes-256-gcm")
    res = pp.run("stanza-create", f"--pg1-path={pg_cluster.datadir}", repo1_cipher_pass="correct horse")
    assert res.returncode == 0, res.stderr
    seg = pg_cluster.generate_wal(1)[0]
    wal = pg_cluster.wal_dir / seg
    assert pp.run("push", str(wal), repo1_cipher_pass="correct horse").returncode == 0
    stored = next((work_dir / "repo" / "archive" / "main").glob(f"*/*/{seg}-*"))
    assert stored.read_bytes()[:5] == b"PGPE1"
    dest = work_dir / "d"
    assert pp.run("get", seg, str(dest), repo1_cipher_pass="correct horse").returncode == 0
    assert dest.read_bytes() == wal.read_bytes()
    res = pp.run("get", seg, str(work_dir / "e"), repo1_cipher_pass="wrong")
    assert res.returncode == 32 and "repo1-cipher-pass" in res.stderr
    assert not (work_dir / "e").exists()


def test_duplicate_push_same_checksum_warns_different_fails(pg_cluster, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    pp.stanza_create(pg_cluster)
    seg = pg_cluster.generate_wal(1)[0]
    wal = pg_cluster.wal_dir / seg
    assert pp.run("push", str(wal)).returncode == 0
    again = pp.run("push", str(wal), log_level_console="warn")
    assert again.returncode == 0
    assert "already exists in the archive with the same checksum" in again.stderr
    fake = work_dir / "fake" / seg
    fake.parent.mkdir()
    data = bytearray(wal.read_bytes())
    data[-1] ^= 0xFF
    fake.write_bytes(bytes(data))
    res = pp.run("push", str(fake), user="root")
    assert res.returncode == 45
    assert res.stderr.startswith("ERROR: [045]: ") and sha1_file(wal) in res.stderr and sha1_file(fake) in res.stderr
    assert len(list((work_dir / "repo").rglob(f"{seg}-*"))) == 1


def test_bad_input_is_refused_and_nothing_written(pg_cluster, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    pp.stanza_create(pg_cluster)
    seg = pg_cluster.generate_wal(1)[0]
    wal = pg_cluster.wal_dir / seg
    repo = work_dir / "repo"
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))

    missing = pp.run("push", str(pg_cluster.wal_dir / "000000010000000000000FFF"))
    assert missing.returncode == 55 and missing.stderr.startswith("ERROR: [055]:")

    bad = work_dir / "bad"
    bad.mkdir()
    for name in ("../000000010000000000000001", "000000010000000000000001.gz", "notawal"):
        target = bad / Path(name).name
        target.write_bytes(wal.read_bytes())
        res = pp.run("push", str(bad / name) if "/" not in name else str(bad / "x" / name), user="root")
        assert res.returncode in (29, 55), (name, res.stderr)

    truncated = bad / seg
    truncated.write_bytes(wal.read_bytes()[: 1 << 20])
    res = pp.run("push", str(truncated), user="root")
    assert res.returncode == 29 and "size" in res.stderr

    empty = bad / "000000010000000000000099"
    empty.write_bytes(b"")
    assert pp.run("push", str(empty), user="root").returncode == 29

    garbage = bad / "000000010000000000000098"
    garbage.write_bytes(os.urandom(16 << 20))
    res = pp.run("push", str(garbage), user="root")
    assert res.returncode in (29, 46), res.stderr

    after = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    assert [p for p in after if p not in before] == []
    assert not list(repo.rglob("*.pgpush.tmp*"))


def test_segment_of_another_cluster_is_refused(pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    a = pg_factory("a", conf={"archive_mode": "on", "archive_command": ""})
    b = pg_factory("b", conf={"archive_mode": "on", "archive_command": ""}, fresh=True)
    pp.stanza_create(a)
    seg = b.generate_wal(1)[0]
    res = pp.run("push", str(b.wal_dir / seg))
    assert res.returncode == 44 and "system" in res.stderr
    assert not list((work_dir / "repo").rglob(f"{seg}-*"))
    # and stanza-create for the other cluster is refused
    assert pp.run("stanza-create", f"--pg1-path={b.datadir}").returncode == 44
    # and a get into the other cluster's data directory is refused (core.check_local_cluster),
    # though the repository has the segment: WAL of one system never goes to another's recovery
    archived = a.generate_wal(1)[0]
    assert pp.run("push", str(a.wal_dir / archived)).returncode == 0
    res = pp.run("get", archived, "pg_wal/RECOVERYXLOG", cwd=b.datadir)  # as PostgreSQL runs it: cwd, %p
    assert res.returncode == 44, res.stderr
    assert res.stderr.startswith(f"ERROR: [044]: the cluster in '{b.datadir}' is from PostgreSQL"), res.stderr
    assert re.findall(r"^ERROR: \[(\d+)\]:", res.stderr, re.M) == ["044"] and "Traceback" not in res.stderr
    assert not (b.datadir / "pg_wal" / "RECOVERYXLOG").exists()
    assert pp.run("get", archived, str(work_dir / "into-a"), pg1_path=str(a.datadir)).returncode == 0  # a's own
    # PostgreSQL as the client: b recovering from the stanza's archive (restore_command, no pg1-path)
    b.stop()
    b.set_conf({"restore_command": pp.restore_command()})
    (b.datadir / "standby.signal").touch()
    before = len(pp.log_text("archive-get"))
    b.start()
    procs.wait_for(lambda: "ERROR: [044]:" in pp.log_text("archive-get")[before:], 60,
                   message="b's restore_command to be refused with 044")
    b.stop()
    assert " found " not in pp.log_text("archive-get")[before:]


def test_get_missing_exits_1_and_corrupt_exits_42_leaving_nothing(pg_cluster, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    pp.stanza_create(pg_cluster)
    seg = pg_cluster.generate_wal(1)[0]
    assert pp.run("push", str(pg_cluster.wal_dir / seg)).returncode == 0
    assert pp.run("get", "0000000100000000000000EE", str(work_dir / "x")).returncode == 1
    stored = next((work_dir / "repo").rglob(f"{seg}-*"))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x55
    stored.write_bytes(bytes(data))
    res = pp.run("get", seg, str(work_dir / "y"))
    assert res.returncode == 42 and res.stderr.startswith("ERROR: [042]:")
    assert not (work_dir / "y").exists() and not list(work_dir.glob("y*"))


def test_no_stanza_says_run_stanza_create(pg_cluster, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    seg = pg_cluster.generate_wal(1)[0]
    res = pp.run("push", str(pg_cluster.wal_dir / seg))
    assert res.returncode == 55 and "stanza-create" in res.stderr
    res = pp.run("get", seg, str(work_dir / "x"))
    assert res.returncode == 55 and "stanza-create" in res.stderr


def test_history_and_partial_files(pg_cluster, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    pp.stanza_create(pg_cluster)
    hist = work_dir / "00000002.history"
    hist.write_text("1\t0/3000000\tno recovery target specified\n")
    os.chown(hist, 0, 0)
    assert pp.run("push", str(hist), user="root").returncode == 0
    assert pp.run("push", str(hist), user="root").returncode == 0
    hist.write_text("1\t0/4000000\tno recovery target specified\n")
    assert pp.run("push", str(hist), user="root").returncode == 45
    assert pp.run("get", "00000002.history", str(work_dir / "h"), user="root").returncode == 0
    assert (work_dir / "h").read_text().startswith("1\t0/3000000")
    seg = pg_cluster.generate_wal(1)[0]
    partial = work_dir / f"{seg}.partial"
    partial.write_bytes((pg_cluster.wal_dir / seg).read_bytes())
    assert pp.run("push", str(partial), user="root").returncode == 0
    assert pp.run("get", partial.name, str(work_dir / "p"), user="root").returncode == 0
    assert (work_dir / "p").read_bytes() == partial.read_bytes()
