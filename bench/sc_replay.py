"""Scenario ``replay``: archive recovery throughput with PostgreSQL driving the tool's get.

A base backup (``pg_basebackup -X none``, taken before the WAL was written) is copied, given
``restore_command`` = the tool's get and a recovery.signal, and started; the clock runs from
``pg_ctl start`` until recovery ends (PostgreSQL removes recovery.signal at promotion), with
every archived segment restored from the repository over SFTP/SSH.  pgpush async (process-max
1, 2, 4) and sync vs pgBackRest async at the same process-max (and sync), each tool's repo
filled by its own async push (each at its default compression: pgpush zst, pgBackRest gz).
"""

from __future__ import annotations

import re
import subprocess
import time

from common import MB, PG_USER, SEG_SIZE, PgCluster, chown, log, make_dir, procs, ratio, rmtree, wait_tools_idle
from sc_async import SftpRepo, archive_clone


def _filled_repo(env, src, tool: str, repo) -> dict:
    key = (src.kind, src.n, tool) if repo.kind == "sftp" else (src.kind, src.n, tool, repo.kind)
    filled = env.shared.setdefault("filled", {})
    if key not in filled:
        log(f"replay: filling the {tool} repository with {len(src.segments)} segments (async push, process-max 2)")
        tag = f"fill-{src.kind}{src.n}-{tool}" + ("" if repo.kind == "sftp" else f"-{repo.kind}")
        res = archive_clone(env, src, tool, None, 2, tag, keep_repo=True, repo=repo)
        if not res.get("finished"):
            raise RuntimeError(f"filling the {tool} repo failed: {res.get('error')}")
        filled[key] = res["repo"]
    return filled[key]


def replay_run(env, src, tool: str, asynchronous: bool, pm: int, tag: str, repo_at=None) -> dict:
    """``repo_at``: where the repositories are (default sc_async.SftpRepo); the one of ``tool``
    is filled once per source (env.shared["filled"])."""
    repo_at = repo_at or SftpRepo(env)
    repo = _filled_repo(env, src, tool, repo_at)
    run_dir = make_dir(env.base / f"replay-{tag}", PG_USER, 0o755)
    pg = env.track(PgCluster(run_dir, "pg"))
    pg._prepare_common()
    subprocess.run(["cp", "-a", str(src.base_backup), str(pg.datadir)], check=True)
    pg._write_harness_conf({"archive_mode": "off", "hot_standby": False})
    if tool == "pgpush":
        obj = repo_at.pgpush(tag, pg, repo_name=repo["obj"].name)
        command = obj.command_line("get", "%f", "%p", archive_async=asynchronous, process_max=pm)
    else:
        obj = repo_at.pgbr
        spool = obj.spool_dir(tag)
        command = obj.command_line("archive-get", repo["stanza"], "%f", "%p", archive_async=asynchronous or None,
                                   process_max=pm, spool_path=spool, pg1_path=pg.datadir)
    pg.set_conf({"restore_command": command})
    signal_file = pg.datadir / "recovery.signal"
    signal_file.touch()
    chown(signal_file, PG_USER, 0o600)
    n = len(src.segments)
    timeout = 120 + 4 * n
    result = {"tool": tool, "mode": "async" if asynchronous else "sync", "process_max": pm, "segments": n}
    try:
        t0 = time.monotonic()
        pg.run([pg.bin("pg_ctl"), "-D", str(pg.datadir), "-l", str(pg.log_file), "-W", "start"], timeout=60)
        deadline = t0 + timeout
        while signal_file.exists() and time.monotonic() < deadline:
            pid = pg._read_pid()
            if pid and not pg.pid:
                pg.pid = pid
                procs.register_pid(pid, f"postmaster {pg.datadir}")
            if pg.pid and not procs.pid_alive(pg.pid):
                break
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        finished = not signal_file.exists()
        text = pg.log_file.read_text(errors="replace")
        restored = len(re.findall(r'restored log file "[0-9A-F]{24}" from archive', text))
        result.update({
            "finished": finished,
            "seconds": round(elapsed, 2),
            "restored_segments": restored,
            "seg_per_s": round(restored / elapsed, 3) if finished else None,
            "mb_per_s": round(restored * SEG_SIZE / MB / elapsed, 1) if finished else None,
        })
        if not finished or restored < n:
            tail = obj.log_tail() if tool == "pgpush" else obj.pg_log_tail(repo["stanza"])
            result["error"] = (f"recovery {'did not finish' if not finished else 'restored too few segments'} "
                               f"({restored}/{n}) after {elapsed:.0f}s\n{pg.log_tail(15)}\n{tail[-3000:]}")
    finally:
        pg.pid = pg.pid or pg._read_pid()
        env.drop_cluster(pg)
        left = wait_tools_idle(timeout=60)
        if left:
            result["killed_leftover_pids"] = left
        rmtree(run_dir)
    return result


def _plan(mode: str) -> list[tuple[int, list[tuple[str, bool, int]]]]:
    """(N, [(tool, async, process-max)]) in the order run (pairs at equal process-max together)."""
    if mode == "quick":
        return [(8, [("pgpush", True, 2), ("pgbackrest", True, 2), ("pgpush", False, 1)])]
    if mode == "medium":
        return [(32, [("pgpush", True, 1), ("pgbackrest", True, 1), ("pgbackrest", True, 2), ("pgpush", True, 2),
                      ("pgpush", False, 1)])]
    full64 = [("pgpush", True, 1), ("pgbackrest", True, 1), ("pgbackrest", True, 2), ("pgpush", True, 2),
              ("pgpush", True, 4), ("pgbackrest", True, 4), ("pgpush", False, 1)]
    return [(64, full64), (256, [("pgpush", True, 2), ("pgbackrest", True, 2)])]


def run(env, mode: str) -> dict:
    out: dict = {"runs": []}
    for n, plan in _plan(mode):
        src = env.source("random", n)
        for i, (tool, asynchronous, pm) in enumerate(plan):
            tag = f"r{n}-{i}-{tool}-{'async' if asynchronous else 'sync'}-pm{pm}"
            res = replay_run(env, src, tool, asynchronous, pm, tag)
            res["n"] = n
            log(f"replay N={n} {tool} {res['mode']} pm={pm}: {res.get('seg_per_s')} seg/s "
                f"({res.get('restored_segments')} segments in {res.get('seconds')} s)")
            out["runs"].append(res)
    out["comparisons"], out["targets"] = _compare(out["runs"])
    return out


def _compare(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    def find(n, tool, mode, pm):
        return next((r for r in runs if (r["n"], r["tool"], r["mode"], r["process_max"]) == (n, tool, mode, pm)), None)

    rows, targets = [], []
    for r in runs:
        if r["tool"] != "pgpush":
            continue
        br = find(r["n"], "pgbackrest", "async", r["process_max"])  # pgpush sync runs at process-max 1
        value = ratio(r.get("seg_per_s"), br and br.get("seg_per_s"))
        row = {"n": r["n"], "pgpush": f"{r['mode']} pm={r['process_max']}",
               "pgbackrest": f"async pm={br['process_max']}" if br else None,
               "ratio": round(value, 2) if value is not None else None}
        rows.append(row)
        if value is not None:
            targets.append({"name": f">= 1.5x pgBackRest async: N={r['n']} pgpush {row['pgpush']} vs pgBackRest "
                                    f"{row['pgbackrest']}", "value": f"{value:.2f}x", "met": value >= 1.5})
    return rows, targets
