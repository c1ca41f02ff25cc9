"""Scenario ``async-push``: sustained archiving throughput with PostgreSQL driving the tool.

A copy of a stopped cluster holding N ready segments (written with archiving paused) is started,
its archive_command set to the tool (asynchronous, process-max P) and reloaded; the clock runs
until pg_wal/archive_status says the last segment is done.  Peak memory of the tool's processes
is sampled every 50 ms (VmHWM per process, summed VmRSS).  Each tool at its default compression
and both at gz; runs of the same process-max are back to back in rotating order.
"""

from __future__ import annotations

import time

from common import MB, SEG_SIZE, MemorySampler, log, ratio, rmtree, wait_file, wait_tools_idle
from pgpushtool import Pgpush

VARIANTS = [  # (label, tool, compress-type or None for the default)
    ("pgpush zst (default)", "pgpush", None),
    ("pgpush gz", "pgpush", "gz"),
    ("pgBackRest gz (default)", "pgbackrest", None),
]


class SftpRepo:
    """Where the tools' repositories are: pgpush over SFTP, pgBackRest in repo-host mode, both
    through ``env.repo_sshd`` (sc_s3.S3Repo is the same interface for a bucket)."""

    kind = "sftp"

    def __init__(self, env):
        self.env = env
        self.pgbr = env.pgbr

    def pgpush(self, name: str, cluster, **kw) -> Pgpush:
        return Pgpush(self.env.base, name, self.env.repo_sshd, cluster=cluster, **kw)

    def _dir(self, tool: str, obj, stanza: str):
        return obj.repo_dir if tool == "pgpush" else self.pgbr.repo_path / "archive" / stanza

    def size_mb(self, tool: str, obj, stanza: str) -> float:
        return round(sum(p.stat().st_size for p in self._dir(tool, obj, stanza).rglob("*") if p.is_file()) / MB, 1)

    def remove(self, tool: str, obj, stanza: str) -> None:
        rmtree(self._dir(tool, obj, stanza))


def archive_clone(env, src, tool: str, compress: str | None, pm: int, tag: str, keep_repo: bool = False,
                  timeout: float | None = None, repo=None, asynchronous: bool = True) -> dict:
    """Start a copy of ``src`` with archive_command = ``tool`` (async, ``pm`` workers) and time it
    until every ready segment is archived.  Returns the measurements (and the repo when kept).
    ``repo``: where the repositories are (default :class:`SftpRepo`).  ``asynchronous=False``:
    a synchronous push per segment instead (``pm`` is then not given to the tool)."""
    repo = repo or SftpRepo(env)
    run_dir = env.base / f"async-{tag}"
    clone = env.track(src.clone(run_dir))
    segs = src.segments
    last = src.ready_segments[-1]
    timeout = timeout or 120 + 4 * len(segs)
    result: dict = {"tool": tool, "compress": compress or "default", "process_max": pm, "segments": len(segs)}
    obj = None
    try:
        clone.start()
        if tool == "pgpush":
            opts = {"compress_type": compress} if compress else {}
            obj = repo.pgpush(tag, clone, **opts)
            obj.stanza_create()
            command = (obj.command_line("push", "%p", archive_async=True, process_max=pm) if asynchronous
                       else obj.command_line("push", "%p"))
        else:
            obj = repo.pgbr
            obj.add_stanza(tag, clone)
            if asynchronous:
                command = obj.command_line("archive-push", tag, "%p", archive_async=True, process_max=pm,
                                           spool_path=obj.spool_dir(tag), compress_type=compress)
            else:
                command = obj.command_line("archive-push", tag, "%p", compress_type=compress)
        clone.set_conf({"archive_command": command})
        done_file = clone.wal_dir / "archive_status" / f"{last}.done"
        with MemorySampler() as mem:
            t0 = time.monotonic()
            clone.sql("select pg_reload_conf()")
            finished = wait_file(done_file, timeout, interval=0.02)
            elapsed = time.monotonic() - t0
        stats = clone.archiver_stats()
        result.update({
            "finished": finished,
            "seconds": round(elapsed, 2),
            "seg_per_s": round(len(segs) / elapsed, 3) if finished else None,
            "mb_per_s": round(len(segs) * SEG_SIZE / MB / elapsed, 1) if finished else None,
            "failed_count": stats["failed_count"],
            "archived_count": stats["archived_count"],
            "repo_mb": repo.size_mb(tool, obj, tag),
            "memory_mb": mem.report(tool),
        })
        if not finished:
            tail = obj.log_tail() if tool == "pgpush" else obj.pg_log_tail(tag)
            result["error"] = f"not caught up after {timeout}s; archiver {stats}\n{clone.log_tail(10)}\n{tail[-3000:]}"
        if keep_repo:
            result["repo"] = {"obj": obj if tool == "pgpush" else None, "stanza": tag}
    finally:
        env.drop_cluster(clone)
        left = wait_tools_idle(timeout=60)
        if left:
            result["killed_leftover_pids"] = left
        rmtree(run_dir)
        if not keep_repo and obj is not None:
            repo.remove(tool, obj, tag)
    return result


MATRIX = {  # (WAL kind, N, process-max values); N > 64 and process-max 4 (but at N=64) run the defaults only
    "quick": [("random", 8, [2])],
    "medium": [("random", 32, [1, 2, 4]), ("pgbench", 16, [2])],
    "full": [("random", 64, [1, 2, 4]), ("pgbench", 64, [2]), ("random", 256, [2])],
}


def run(env, mode: str) -> dict:
    out: dict = {"runs": []}
    k = 0
    for kind, n, pms in MATRIX[mode]:
        src = env.source(kind, n)
        for pm in pms:
            variants = VARIANTS if n <= 64 and (pm < 4 or mode == "full") else [v for v in VARIANTS if v[2] is None]
            group = []
            for j in range(len(variants)):
                label, tool, compress = variants[(j + k) % len(variants)]
                tag = f"a{k}-{kind}{n}-pm{pm}-{tool}-{compress or 'def'}"
                keep = (kind == "random" and pm == 2 and compress is None)
                res = archive_clone(env, src, tool, compress, pm, tag, keep_repo=keep)
                res.update({"label": label, "kind": kind, "n": n})
                if keep and res.get("finished"):
                    env.shared.setdefault("filled", {})[(kind, n, tool)] = res.pop("repo")
                res.pop("repo", None)
                mem = res.get("memory_mb", {})
                log(f"async-push {kind} N={n} pm={pm} {label}: {res.get('seg_per_s')} seg/s "
                    f"({res.get('seconds')} s, failed_count {res.get('failed_count')}), peak RSS by role "
                    f"{mem.get('peak_mb_by_role')} MB, total {mem.get('peak_total_mb')} MB")
                group.append(res)
            k += 1
            out["runs"] += group
    out["comparisons"] = _compare(out["runs"])
    out["targets"] = _targets(out)
    return out


def _find(runs, kind, n, pm, label):
    for r in runs:
        if (r["kind"], r["n"], r["process_max"], r["label"]) == (kind, n, pm, label):
            return r
    return None


def _compare(runs: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["kind"], r["n"], r["process_max"]) for r in runs}, key=lambda x: (x[0] != "random", x[1], x[2]))
    for kind, n, pm in keys:
        br = _find(runs, kind, n, pm, "pgBackRest gz (default)")
        zst = _find(runs, kind, n, pm, "pgpush zst (default)")
        gz = _find(runs, kind, n, pm, "pgpush gz")
        rows.append({
            "kind": kind, "n": n, "process_max": pm,
            "defaults": _r(zst, br), "same_gz": _r(gz, br),
        })
    return rows


def _r(a, b):
    value = ratio(a and a.get("seg_per_s"), b and b.get("seg_per_s"))
    return round(value, 2) if value is not None else None


def _targets(out: dict) -> list[dict]:
    targets = []
    for row in out["comparisons"]:
        where = f"{row['kind']} N={row['n']} pm={row['process_max']}"
        if row["same_gz"] is not None:
            targets.append({"name": f">= 1.0x pgBackRest at the same compression (gz), {where}",
                            "value": f"{row['same_gz']:.2f}x", "met": row["same_gz"] >= 1.0})
        if row["defaults"] is not None:
            targets.append({"name": f">= 1.5x pgBackRest at the defaults (zst vs gz), {where}",
                            "value": f"{row['defaults']:.2f}x", "met": row["defaults"] >= 1.5})
    worst = 0.0
    for r in out["runs"]:
        if r["tool"] == "pgpush":
            roles = r.get("memory_mb", {}).get("peak_mb_by_role", {})
            worst = max([worst, *roles.values()])
    if worst:
        targets.append({"name": "goal: pgpush RSS < 60 MB per process (peak over all runs)", "value": f"{worst:.0f} MB",
                        "met": worst < 60})
    return targets
