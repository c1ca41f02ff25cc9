"""Scenario ``backup``: full backup and restore throughput of a pgbench database.

pgpush ``backup``/``restore`` (database host, to the SFTP repo) vs ``pgbackrest backup
--type=full`` (repo host, pulling from the database host over SSH) and ``pgbackrest restore``
(database host), at process-max 1 and 2, each tool's default compression and both at gz.
MB/s = size of the data directory (without pg_wal) / wall time.  Both start with an immediate
checkpoint; neither waits for WAL archiving (pgpush without ``--wait``, pgBackRest
``--no-archive-check``), while archive_command feeds both repositories so the backups are
complete.  Restores go into an empty directory and PostgreSQL is not started.
"""

from __future__ import annotations

import json
import os
import re
import time

from common import MB, PG_USER, PgCluster, log, make_dir, ratio, rmtree, wait_tools_idle

STANZA = "bk"


def _data_size(datadir) -> int:
    total = 0
    for root, dirs, files in os.walk(datadir):
        if os.path.relpath(root, datadir) == ".":
            dirs[:] = [d for d in dirs if d != "pg_wal"]
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _pgbr_last_label(pgbr) -> str:
    res = pgbr.repo_cmd("info", STANZA, output="json", timeout=120).check("pgbackrest info")
    return json.loads(res.stdout)[0]["backup"][-1]["label"]


def run(env, mode: str, repo=None, scale: int | None = None, plan: list | None = None) -> dict:
    """``repo``: where the repositories are (default sc_async.SftpRepo); ``scale`` and ``plan``
    (process-max, compression label, compress-type) override the mode's."""
    from sc_async import SftpRepo

    repo = repo or SftpRepo(env)
    pgbr = repo.pgbr
    scale = scale or {"quick": 10, "medium": 30, "full": 100}[mode]
    base = make_dir(env.base / ("backup" if repo.kind == "sftp" else f"backup-{repo.kind}"), PG_USER, 0o755)
    pg = env.track(PgCluster(base, "pg"))
    pg.init({"archive_mode": "on", "archive_command": "", "max_wal_size": "2GB", "checkpoint_timeout": "1h"}).start()
    log(f"backup: pgbench -i -s {scale}")
    pg.pgbench_init(scale)
    pg.sql("vacuum analyze; checkpoint")
    size = _data_size(pg.datadir)
    pp = repo.pgpush("backup" if repo.kind == "sftp" else f"backup-{repo.kind}", pg)
    pp.stanza_create()
    pgbr.add_stanza(STANZA, pg)
    pg.set_conf({"archive_command": f"{pp.command_line('push', '%p')} && {pgbr.command_line('archive-push', STANZA, '%p')}"})
    pg.reload()
    log(f"backup: database {size / MB:.0f} MB; archive_command feeds both repositories")
    # (process-max, compression label, compress-type); gz only at process-max 2 to keep the run short
    plan = plan or {"quick": [(1, "default", None)], "medium": [(1, "default", None), (2, "default", None)],
                    "full": [(1, "default", None), (2, "default", None), (2, "gz", "gz")]}[mode]
    runs = []
    for k, (pm, cname, compress) in enumerate(plan):
        order = ["pgpush", "pgbackrest"] if k % 2 == 0 else ["pgbackrest", "pgpush"]
        for tool in order:
            runs.append(_one(env, pg, pp, tool, pm, cname, compress, size, pgbr))
    env.drop_cluster(pg)
    out = {"scale": scale, "size_mb": round(size / MB, 1), "runs": runs}
    rows, targets = [], []
    for pm, cname, _ in plan:
        p = next((r for r in runs if (r["tool"], r["process_max"], r["compress"]) == ("pgpush", pm, cname)), None)
        b = next((r for r in runs if (r["tool"], r["process_max"], r["compress"]) == ("pgbackrest", pm, cname)), None)
        row = {"process_max": pm, "compress": cname}
        for what in ("backup", "restore"):
            value = ratio(p and p.get(f"{what}_mb_per_s"), b and b.get(f"{what}_mb_per_s"))
            row[what] = round(value, 2) if value is not None else None
            if value is not None:
                targets.append({"name": f"{what} >= 1.0x pgBackRest, pm={pm}, {cname} compression",
                                "value": f"{value:.2f}x", "met": value >= 1.0})
        rows.append(row)
    out["comparisons"], out["targets"] = rows, targets
    return out


def _one(env, pg, pp, tool: str, pm: int, cname: str, compress: str | None, size: int, pgbr) -> dict:
    res = {"tool": tool, "process_max": pm, "compress": cname}
    if tool == "pgpush":
        b = pp.run("backup", "--type=full", process_max=pm, compress_type=compress, timeout=1800)
        found = re.findall(r"backup (\S+) is ", b.stdout + b.stderr)
        label = found[-1] if found else None
    else:
        b = pgbr.repo_cmd("backup", STANZA, type="full", process_max=pm, compress_type=compress, start_fast=True,
                          archive_check=False, timeout=1800)
        label = _pgbr_last_label(pgbr) if b.rc == 0 else None
    res["backup_s"] = round(b.seconds, 2)
    if b.rc != 0 or not label:
        res["error"] = f"backup exited {b.rc}: {(b.stdout + b.stderr)[-2000:]}"
        return res
    res["label"] = label
    res["backup_mb_per_s"] = round(size / MB / b.seconds, 1)
    t0 = time.monotonic()
    left = wait_tools_idle(30)  # archive_command still pushing the backup's WAL
    res["waited_for_archiving_s"] = round(time.monotonic() - t0, 1)
    if left:
        res["killed_after_30s"] = left
    target = env.base / f"restore-{tool}-{pm}-{cname}"
    make_dir(target, PG_USER, 0o700)
    try:
        if tool == "pgpush":
            r = pp.run("restore", f"--set={label}", pg1_path=target, process_max=pm, timeout=1800)
        else:
            r = pgbr.pg_cmd("restore", STANZA, set=label, pg1_path=target, process_max=pm, timeout=1800)
        res["restore_s"] = round(r.seconds, 2)
        if r.rc != 0:
            res["error"] = f"restore exited {r.rc}: {(r.stdout + r.stderr)[-2000:]}"
        else:
            res["restore_mb_per_s"] = round(size / MB / r.seconds, 1)
            restored = _data_size(target)
            res["restored_mb"] = round(restored / MB, 1)
    finally:
        rmtree(target)
    log(f"backup {tool} pm={pm} {cname}: backup {res.get('backup_mb_per_s')} MB/s ({res['backup_s']} s), restore "
        f"{res.get('restore_mb_per_s')} MB/s ({res.get('restore_s')} s)")
    return res
