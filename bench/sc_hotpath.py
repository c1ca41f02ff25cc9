"""Scenario ``hotpath``: one foreground ``push`` whose ``.ok`` is already in the spool.

pgpush (async, file pre-pushed), pgBackRest (async archive-push, ``.ok`` in its spool) and
``dist/empty.pyz`` (same shebang, does nothing: the floor), each run by its own shebang as
postgres from the data directory, interleaved, many times; medians.  Also
``python3 -X importtime`` of pgpush's hot path.
"""

from __future__ import annotations

import statistics

import common
from common import PgCluster, log, median, ratio, run_tool, wait_file, wait_tools_idle
from pgpushtool import Pgpush


def run(env, mode: str) -> dict:
    runs = 20 if mode == "quick" else 60
    pg = env.track(PgCluster(env.base / "hotpath", "pg"))
    (env.base / "hotpath").mkdir(exist_ok=True)
    pg.init({"archive_mode": "on", "archive_command": ""}).start()
    seg = pg.generate_wal(2)[0]
    wal = f"pg_wal/{seg}"
    pp = Pgpush(env.base, "hotpath", env.repo_sshd, cluster=pg)
    pp.stanza_create()
    env.pgbr.add_stanza("hotpath", pg)
    spool = env.pgbr.spool_dir("hotpath")
    pp_argv = pp.argv("push", wal, archive_async=True, process_max=1)
    br_argv = env.pgbr.pg_argv("archive-push", "hotpath", wal, archive_async=True, process_max=1, spool_path=spool)
    empty_argv = [str(common.EMPTY_PYZ), f"--config={pp.conf}", "--stanza=main", "push", wal]

    # Pre-push: the first call starts each tool's background parent, which pushes the ready WAL.
    first = {
        "pgpush": run_tool(pp_argv, cwd=pg.datadir, timeout=120).check("pgpush push (async, first)").seconds,
        "pgbackrest": run_tool(br_argv, cwd=pg.datadir, timeout=120).check("pgbackrest archive-push (first)").seconds,
    }
    for path in (pp.spool / "archive" / "main" / "out" / f"{seg}.ok", spool / "archive" / "hotpath" / "out" / f"{seg}.ok"):
        if not wait_file(path, 30):
            raise RuntimeError(f"{path} did not appear")
    wait_tools_idle(timeout=60)  # both parents done
    log(f"hotpath: first async push (starts the parent): pgpush {first['pgpush'] * 1000:.0f} ms, "
        f"pgBackRest {first['pgbackrest'] * 1000:.0f} ms; now {runs} interleaved runs each")

    tools = [("pgpush", pp_argv), ("pgbackrest", br_argv), ("empty", empty_argv)]
    times: dict[str, list[float]] = {name: [] for name, _ in tools}
    for i in range(runs):
        for name, argv in tools[i % 3:] + tools[:i % 3]:
            res = run_tool(argv, cwd=pg.datadir, timeout=60)
            if name != "empty":
                res.check(f"{name} hot-path push")
            times[name].append(res.seconds)
    leftover = wait_tools_idle(timeout=10)

    ms = {name: {"median_ms": round(median(v) * 1000, 2), "p10_ms": round(_pct(v, 10) * 1000, 2),
                 "p90_ms": round(_pct(v, 90) * 1000, 2), "runs": len(v)} for name, v in times.items()}
    p, b, e = (median(times[n]) for n in ("pgpush", "pgbackrest", "empty"))
    result = {
        "runs": runs,
        "first_call_ms": {k: round(v * 1000, 1) for k, v in first.items()},
        "tools": ms,
        "pgpush_over_pgbackrest": round(ratio(p, b), 3),
        "pgpush_over_empty": round(ratio(p, e), 3),
        "ratio_pgbackrest_over_pgpush": round(ratio(b, p), 3),
        "leftover_processes": leftover,
        "importtime": importtime(importtime_argv(pp_argv), pg.datadir),
    }
    r1, r2 = result["pgpush_over_pgbackrest"], result["pgpush_over_empty"]
    result["targets"] = [
        {"name": "pgpush <= 2.0x pgBackRest (hot path latency)", "value": f"{r1:.2f}x", "met": r1 <= 2.0},
        {"name": "goal: pgpush <= 1.5x pgBackRest", "value": f"{r1:.2f}x", "met": r1 <= 1.5},
        {"name": "pgpush <= 1.5x empty zipapp", "value": f"{r2:.2f}x", "met": r2 <= 1.5},
        {"name": "goal: pgpush <= 1.2x empty zipapp", "value": f"{r2:.2f}x", "met": r2 <= 1.2},
    ]
    log(f"hotpath medians: pgpush {ms['pgpush']['median_ms']} ms, pgBackRest {ms['pgbackrest']['median_ms']} ms, "
        f"empty.pyz {ms['empty']['median_ms']} ms -> pgpush/pgBackRest {r1:.2f}x, pgpush/empty {r2:.2f}x")
    env.drop_cluster(pg)
    return result


def _pct(values: list[float], pct: int) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def importtime_argv(pgpush_argv: list[str]) -> list[str]:
    """``pgpush_argv`` (zipapp first) run by the shebang's interpreter with ``-X importtime``."""
    return ["/usr/bin/python3", "-IS", "-X", "importtime", str(common.PGPUSH_PYZ), *pgpush_argv[1:]]


def importtime(argv: list[str], cwd, runs: int = 7) -> dict:
    """Median self/cumulative import time per module over ``runs`` runs of ``argv``."""
    selfs: dict[str, list[int]] = {}
    cumul: dict[str, list[int]] = {}
    top_level: set[str] = set()
    totals = []
    for _ in range(runs):
        res = run_tool(argv, cwd=cwd, timeout=120)
        total = 0
        for line in res.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            parts = line[len("import time:"):].split("|")
            if len(parts) != 3:
                continue
            name = parts[2].rstrip()
            depth = (len(name) - len(name.lstrip())) // 2
            name = name.strip()
            s, c = int(parts[0]), int(parts[1])
            selfs.setdefault(name, []).append(s)
            cumul.setdefault(name, []).append(c)
            if depth == 0:
                total += c
                top_level.add(name)
        totals.append(total)
    if not totals or not selfs:
        return {}
    top = sorted(selfs, key=lambda n: -median(selfs[n]))[:15]
    top_cum = sorted(top_level, key=lambda n: -median(cumul[n]))[:10]
    return {
        "runs": runs,
        "total_import_ms": round(median(totals) / 1000, 2),
        "modules": len(selfs),
        "top_self": [{"module": n, "self_ms": round(median(selfs[n]) / 1000, 2),
                      "cumulative_ms": round(median(cumul[n]) / 1000, 2)} for n in top],
        "top_level_cumulative": [{"module": n, "cumulative_ms": round(median(cumul[n]) / 1000, 2)} for n in top_cum],
    }
