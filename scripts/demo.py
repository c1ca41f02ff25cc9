"""`make demo`: pgpush's main job end to end on the embedded default (posix repo), nothing to configure.

A throwaway PostgreSQL 15, a local repository and spool in a temp dir, asynchronous push under pgbench, a full
backup, more writes, a point-in-time restore into a new data directory that is started and queried, and `info`.
Everything runs through the built zipapp exactly as a DBA runs it (as `postgres`, by its shebang), and the
demo cleans up after itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness import procs  # noqa: E402
from harness.pg import PgCluster  # noqa: E402


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def main() -> int:
    if os.geteuid() != 0:
        print("make demo runs as root (it starts PostgreSQL as the postgres user)", file=sys.stderr)
        return 2
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="pgpush-demo-", dir="/tmp"))
    os.chmod(work, 0o755)
    procs.chown_tree(work, "postgres")
    zipapp = work / "pgpush.pyz"
    shutil.copy2(ROOT / "dist" / "pgpush.pyz", zipapp)
    os.chmod(zipapp, 0o755)
    conf = work / "pgpush.conf"
    conf.write_text(f"""[global]
repo1-path={work}/repo
spool-path={work}/spool
log-path={work}/log
archive-async=y
process-max=2

[demo]
pg1-path={work}/pg
""")
    procs.chown_tree(work, "postgres")
    base = [str(zipapp), f"--config={conf}", "--stanza=demo"]

    def pgpush(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        print("$ pgpush " + " ".join(args), flush=True)
        res = subprocess.run(["runuser", "-u", "postgres", "--"] + base + list(args), cwd="/", text=True,
                             capture_output=True)
        for line in (res.stdout + res.stderr).splitlines():
            print(f"    {line}")
        if check and res.returncode != 0:
            raise SystemExit(f"pgpush {args[0]} failed with exit code {res.returncode}")
        return res

    pg = PgCluster(work, "pg")
    restored = PgCluster(work, "restored")
    try:
        step("a throwaway PostgreSQL 15 with archive_command = pgpush push (asynchronous, process-max 2)")
        pg.init({"archive_mode": "on", "archive_command": f"{zipapp} --config={conf} --stanza=demo push %p"})
        pg.start()
        with open(conf, "a") as fh:  # where the throwaway cluster listens
            fh.write(f"pg1-port={pg.port}\npg1-socket-path={pg.socket_dir}\n")
        procs.chown_tree(work / "pgpush.conf", "postgres")
        pgpush("stanza-create")
        pgpush("check")

        step("pgbench writes WAL; pgpush archives it in the background")
        pg.pgbench_init(scale=5)
        pg.pgbench(seconds=5, clients=2)

        step("a full backup, waiting until its WAL is in the repository")
        pgpush("backup", "--type=full", "--wait", "--wait-timeout=60")

        step("more writes: row 1 before the target time, row 2 after it")
        pg.sql("create table demo_marks(id int primary key, at timestamptz default clock_timestamp())")
        pg.pgbench(seconds=3, clients=2)
        pg.sql("insert into demo_marks(id) values (1)")
        before = pg.sql("select count(*) from pgbench_history")
        time.sleep(1.0)
        target = pg.sql("select clock_timestamp()")
        time.sleep(1.0)
        pg.sql("insert into demo_marks(id) values (2)")
        pg.pgbench(seconds=2, clients=2)
        after = pg.sql("select count(*) from pgbench_history")
        last = pg.switch_wal()
        pg.wait_archived(last, timeout=120)
        print(f"    target time {target}: pgbench_history had {before} rows then, {after} at the end")

        step(f"point-in-time restore into a new directory, to {target}")
        restored._prepare_common()
        pgpush("restore", f"--pg1-path={restored.datadir}", "--type=time", f"--target={target}",
               "--target-action=promote")
        restored.set_conf({"port": restored.port, "unix_socket_directories": str(restored.socket_dir),
                           "archive_mode": "off"})
        restored.start(timeout=300)
        deadline = time.monotonic() + 300
        while restored.sql("select pg_is_in_recovery()") == "t":
            if time.monotonic() > deadline:
                raise SystemExit("recovery did not finish in time")
            time.sleep(0.5)
        marks = restored.sql("select coalesce(array_agg(id order by id)::text, '{}') from demo_marks")
        rows = restored.sql("select count(*) from pgbench_history")
        print(f"    restored cluster: demo_marks = {marks} (expected {{1}}), "
              f"pgbench_history = {rows} rows (original: {before} at the target, {after} at the end)")
        ok = marks == "{1}" and int(before) <= int(rows) < int(after)

        step("info")
        pgpush("info")
        print(f"\n{'OK' if ok else 'FAILED'}: demo finished in {time.monotonic() - started:.0f} s")
        return 0 if ok else 1
    finally:
        for cluster in (restored, pg):
            try:
                cluster.cleanup()
            except Exception as exc:  # noqa: BLE001 - clean up the rest
                print(f"cleanup: {exc}", file=sys.stderr)
        subprocess.run(["pkill", "-f", "--", f"--config={conf}"], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
