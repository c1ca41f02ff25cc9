"""One file on every database host: the zipapp on Debian 11 and 13 with each release's own
python3 and PostgreSQL, and on an arm64 Debian 12 through qemu (issue #14, docs/operations.md).

Each release runs in a debootstrap'd root (harness.debroot, cached in /var/cache/pgpush-test;
the first run builds it: measured here 226 s for bullseye, 299 s for trixie, 19 min for arm64
bookworm, whose second stage runs every maintainer script under qemu) mounted per test (harness.chroot).  The cluster,
its archive_command and restore_command, and every pgpush command run inside the root as its
``postgres`` with its ``/usr/bin/python3``; the repository is this host's real sshd over SFTP.

The zipapp must carry the compiled modules of the release's interpreter (``make zipapp`` bundles
CPython 3.9-3.13 for x86_64 and aarch64); a build without them fails here, naming the set.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from backup_env import backup, info_json
from debian_env import ChrootPgpush, carries_set, mounted_root, sftp_repo, zipapp_path
from harness.chroot import ChrootCluster, DebRoot
from pgpush_env import archived_files

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# PGPUSH_TEST_DEBIAN_RELEASES="bookworm" runs the end-to-end test in a Debian 12 root, which the
# zipapp built on this host always carries modules for: the whole test, whatever the build bundles.
RELEASES = os.environ.get("PGPUSH_TEST_DEBIAN_RELEASES", "bullseye trixie").split()
SEGMENT = "0000000100000000000000A7"  # the fast path check's; never archived


@pytest.fixture(scope="module")
def zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zipapp_path(tmp_path_factory.mktemp("zipapp"))


def _version(root: DebRoot, pyz: str) -> str:
    res = root.run(["/usr/bin/python3", pyz, "version"], check=False)
    assert res.returncode == 0 and res.stdout.startswith("pgpush "), (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    return res.stdout


def _fast_path_get(root: DebRoot, pp: ChrootPgpush) -> None:
    """An async get answered from the spool: the stdlib-only path, in a spool of its own."""
    spool = root.host("/var/lib/postgresql/fastpath-spool")
    queue = spool / "archive" / pp.stanza / "in"
    queue.mkdir(parents=True)
    for d in (spool, *queue.relative_to(spool).parents, queue.relative_to(spool)):
        root.chown(spool / d)
    payload = bytes(range(256)) * 64
    (queue / SEGMENT).write_bytes(payload)
    root.chown(queue / SEGMENT)
    dest = root.host("/tmp/RECOVERYXLOG")
    res = pp.run("get", SEGMENT, str(dest), archive_async="y", spool_path=str(spool), archive_get_queue_max="0")
    assert res.returncode == 0, res.stderr
    assert dest.read_bytes() == payload and not (queue / SEGMENT).exists()


def _wait_promoted(cluster: ChrootCluster, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while cluster.sql("select pg_is_in_recovery()") == "t":
        assert time.monotonic() < deadline, cluster.log_tail()
        time.sleep(0.3)


@pytest.mark.parametrize("name", RELEASES)
def test_release_end_to_end(name: str, zipapp: Path, work_dir: Path, sshd) -> None:
    with mounted_root(name, work_dir / "deb") as root:
        release = root.release
        assert root.python_version() == release.python
        pyz = root.install_zipapp(zipapp)
        _version(root, pyz)
        pp = ChrootPgpush(root, pyz, repo=sftp_repo(root, sshd), archive_async="y", process_max=2)
        _fast_path_get(root, pp)
        assert carries_set(zipapp, release.python, release.machine), (
            f"{zipapp.name} carries no compiled modules for CPython {release.python} {release.machine}")

        pg = ChrootCluster(root, "pg")
        restored = ChrootCluster(root, "restored")
        try:
            pg.init({"archive_mode": "on", "archive_command": ""}).start()
            pp.stanza_create(pg)
            pg.set_conf({"archive_command": pp.archive_command()})
            pg.reload()
            pg.sql("create table t as select g from generate_series(1, 1000) g")
            segments = pg.generate_wal(4)
            pg.wait_archived(segments[-1])
            assert set(segments) <= set(archived_files(sshd.repo_dir))
            assert "archive-push-async" in " ".join(p.name for p in pp.log_path.iterdir())

            label, _ = backup(pp, pg, "--type=full", "--wait", "--wait-timeout=60")

            pg.sql("create table marks(id int primary key); insert into marks values (1)")
            target = pg.sql("select now()")
            time.sleep(1.1)
            pg.sql("insert into marks values (2)")
            pg.wait_archived(pg.switch_wal())

            restored._prepare_common()
            res = pp.run("restore", f"--pg1-path={restored.datadir}", "--type=time", f"--target={target}",
                         "--target-action=promote", timeout=180)
            assert res.returncode == 0, res.stderr
            assert f"restore of backup {label} " in res.stdout
            auto_conf = (restored.datadir / "postgresql.auto.conf").read_text()
            assert "--archive-async" in auto_conf and "/usr/bin/python3 -IS /usr/local/bin/pgpush.pyz" in auto_conf
            restored.set_conf({"port": restored.port, "unix_socket_directories": str(restored.socket_dir),
                               "archive_mode": "off"})
            restored.start(timeout=120)
            _wait_promoted(restored)
            assert restored.sql("select array_agg(id order by id) from marks") == "{1}"
            assert restored.sql("select count(*) from t") == "1000"
            assert (pp.log_path / "main-archive-get-async.log").exists(), sorted(pp.log_path.iterdir())

            info = info_json(pp)
            assert [b["label"] for b in info[0]["backups"]] == [label]
            assert info[0]["backups"][0]["status"] == "DONE", json.dumps(info, indent=1)
            res = pp.run("verify")
            assert res.returncode == 0, res.stdout + res.stderr
        finally:
            restored.cleanup()
            pg.cleanup()


def test_arm64_version_and_posix_round_trip(zipapp: Path, work_dir: Path, pg_factory) -> None:
    """arm64 Debian 12 under qemu-aarch64 (binfmt_misc): version, then push and get through a posix repo.

    The root has no PostgreSQL: a host cluster lends its pg_control and a real segment (push
    checks the segment's header against the stanza)."""
    with mounted_root("bookworm-arm64", work_dir / "deb") as root:
        release = root.release
        root.add_user("postgres")
        assert root.run(["/usr/bin/uname", "-m"]).stdout.strip() == "aarch64"
        assert root.python_version() == release.python
        arm = zipapp.parent / "pgpush-aarch64.pyz"  # the build writes one file per machine, side by side
        assert arm.is_file(), f"{arm} missing: make zipapp writes it beside {zipapp.name}"
        assert carries_set(arm, release.python, release.machine), (
            f"{arm.name} carries no compiled modules for CPython {release.python} aarch64")
        pyz = root.install_zipapp(arm)
        _version(root, pyz)
        host = pg_factory("host", conf={"archive_mode": "off"})
        name = host.switch_wal()
        data = root.host("/var/lib/postgresql/data")
        for sub, source in (("global/pg_control", host.datadir / "global" / "pg_control"),
                            (f"pg_wal/{name}", host.wal_dir / name)):
            (data / sub).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, data / sub)
        for path in (data, *data.rglob("*")):
            root.chown(path)
        pp = ChrootPgpush(root, pyz, repo=None)
        pp.run("stanza-create", f"--pg1-path={data}", check=True, timeout=300)
        pp.run("push", str(data / "pg_wal" / name), check=True, timeout=300)
        assert name in archived_files(pp.work_dir / "repo")
        dest = root.host("/tmp/RECOVERYXLOG")
        pp.run("get", name, str(dest), f"--pg1-path={data}", check=True, timeout=300)
        assert dest.read_bytes() == (host.wal_dir / name).read_bytes()
