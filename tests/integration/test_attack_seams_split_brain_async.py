"""Seams between the fixes: a split brain in asynchronous mode.

Two clusters with one system identifier and timeline (an old primary that lives on after a
failover) archive the same WAL names with different content through their own spools, with a
pool of two workers each, into one repository, as PostgreSQL drives them.  Whatever the
interleaving: each name is stored once, a cluster is told a name is archived (``.done``) only
when the stored content is its own, and get serves only the stored content.
"""

from __future__ import annotations

import threading
import time

import pytest
from harness import faults, procs
from pgpush_env import Pgpush, sha1_file

from pgpush.storage.posix import PosixStorage

pytestmark = pytest.mark.integration

CONF = {"archive_mode": "on", "archive_command": "", "wal_keep_size": "1GB"}


def _done(cluster, names: list[str]) -> set[str]:
    status = cluster.wal_dir / "archive_status"
    return {n for n in names if (status / f"{n}.done").exists()}


@pytest.mark.parametrize("repo_type", ["posix", "sftp", "s3"])
def test_split_brain_clusters_archiving_asynchronously_acknowledge_only_the_stored_content(
        request, pg_factory, pgpush_cmd, work_dir, repo_type):
    a = pg_factory("a", conf=CONF, wal_segsize_mb=1)
    b = pg_factory("b", conf=CONF, wal_segsize_mb=1)
    assert a.system_identifier() == b.system_identifier()
    if repo_type == "sftp":
        sshd = request.getfixturevalue("sshd")
        repo, reader = sshd.pgpush_options(), lambda: PosixStorage(str(sshd.repo_dir))
    elif repo_type == "s3":
        bucket = request.getfixturevalue("seaweed")
        repo, reader = bucket.pgpush_options(), lambda: bucket.storage("/repo", timeout=10)
    else:
        repo, reader = None, lambda: PosixStorage(str(work_dir / "repo"))
    spools = {}
    for cluster in (a, b):
        spool = work_dir / f"spool-{cluster.name}"
        spool.mkdir()
        spools[cluster.name] = spool
    pa = Pgpush(pgpush_cmd, work_dir, repo=repo, archive_async="y", process_max=2, archive_timeout=20,
                spool_path=spools["a"])
    pb = Pgpush(pgpush_cmd, work_dir, repo=repo, archive_async="y", process_max=2, archive_timeout=20,
                spool_path=spools["b"])
    for spool in spools.values():
        procs.chown_tree(spool, "postgres")
    pa.stanza_create(a)
    for cluster, pp in ((a, pa), (b, pb)):
        cluster.set_conf({"archive_command": pp.archive_command()})
        cluster.reload()

    made: dict[str, list[str]] = {}
    threads = [threading.Thread(target=lambda c=c: made.__setitem__(c.name, c.generate_wal(
        6, random_payload=True, payload_bytes=300_000))) for c in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    names = sorted(set(made["a"]) & set(made["b"]))
    names = [n for n in names if sha1_file(a.wal_dir / n) != sha1_file(b.wal_dir / n)]
    assert len(names) >= 3, made

    # Until each cluster is either done with every name or stuck on one (45, retried for ever).
    deadline = time.monotonic() + 90
    while True:
        stuck = {c.name: c.archiver_stats()["failed_count"] > 0 for c in (a, b)}
        if all(stuck[c.name] or _done(c, names) == set(names) for c in (a, b)):
            break
        assert time.monotonic() < deadline, ({c.name: sorted(_done(c, names)) for c in (a, b)}, stuck)
        time.sleep(0.3)
    time.sleep(2)  # what is in flight lands

    with reader() as storage:
        stored = faults.check_archive(storage)  # once per name, each whole
    assert set(stored) >= _done(a, names) | _done(b, names)
    for cluster in (a, b):
        for name in _done(cluster, names):
            assert stored[name] == sha1_file(cluster.wal_dir / name), (
                f"{cluster.name} was told {name} is archived, but the repository holds the other content")
    for name in names:
        if name not in stored:
            continue
        dest = work_dir / f"{name}.got"
        res = pa.run("get", name, str(dest), cwd=work_dir, archive_async="n")
        assert res.returncode == 0, res.stderr
        assert sha1_file(dest) == stored[name]
    log = (a.log_file.read_text(errors="replace") + b.log_file.read_text(errors="replace"))
    assert "Traceback" not in log
    codes = {line.split("]")[0] for line in log.splitlines() if line.startswith("ERROR: [")}
    assert codes <= {"ERROR: [045"}, codes
