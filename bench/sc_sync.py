"""Scenario ``sync``: synchronous push of N real segments, one call each as PostgreSQL makes
them (shebang, postgres, cwd = data directory), then synchronous get of the same N, one call
each, replay-style.  pgpush at its default (zst) and at gz vs pgBackRest at its default (gz),
all over the same sshd; the three are interleaved segment by segment (rotating order).
"""

from __future__ import annotations

from common import MB, SEG_SIZE, log, make_dir, median, ratio, rmtree, run_tool
from pgpushtool import Pgpush
from sc_hotpath import importtime, importtime_argv


def _variants(env, kind: str, src) -> list[dict]:
    stanza = f"sync-{kind}"
    return [
        {"name": "pgpush zst (default)", "tool": "pgpush",
         "obj": Pgpush(env.base, f"sync-{kind}-zst", env.repo_sshd, cluster=src.cluster)},
        {"name": "pgpush gz", "tool": "pgpush",
         "obj": Pgpush(env.base, f"sync-{kind}-gz", env.repo_sshd, cluster=src.cluster, compress_type="gz")},
        {"name": "pgBackRest gz (default)", "tool": "pgbackrest", "stanza": stanza},
    ]


def _push_argv(env, v: dict, wal: str) -> list[str]:
    if v["tool"] == "pgpush":
        return v["obj"].argv("push", wal)
    return env.pgbr.pg_argv("archive-push", v["stanza"], wal)


def _get_argv(env, v: dict, seg: str, dest: str) -> list[str]:
    if v["tool"] == "pgpush":
        return v["obj"].argv("get", seg, dest)
    return env.pgbr.pg_argv("archive-get", v["stanza"], seg, dest)


def _summary(times: list[float]) -> dict:
    total = sum(times)
    n = len(times)
    return {
        "calls": n,
        "first_ms": round(times[0] * 1000, 1),
        "steady_median_ms": round(median(times[1:] or times) * 1000, 1),
        "seg_per_s": round(n / total, 3),
        "mb_per_s": round(n * SEG_SIZE / MB / total, 2),
        "total_s": round(total, 2),
    }


PLAN = {"quick": [("pgbench", 4), ("random", 4)], "medium": [("pgbench", 16), ("random", 16)],
        "full": [("pgbench", 64), ("random", 32)]}


def run(env, mode: str) -> dict:
    plan = PLAN[mode]
    out: dict = {"segments": dict(plan), "kinds": {}}
    for kind, n in plan:
        src = env.source(kind, n)
        segs = src.segments[-n:]
        pg = src.cluster
        pg.start()  # pgBackRest's stanza-create talks to PostgreSQL
        variants = _variants(env, kind, src)
        for v in variants:
            if v["tool"] == "pgpush":
                v["obj"].stanza_create()
            else:
                env.pgbr.add_stanza(v["stanza"], pg)
        pg.stop()
        log(f"sync/{kind}: pushing {len(segs)} segments with each tool, interleaved")
        push = {v["name"]: [] for v in variants}
        for i, seg in enumerate(segs):
            for v in variants[i % 3:] + variants[:i % 3]:
                res = run_tool(_push_argv(env, v, f"pg_wal/{seg}"), cwd=pg.datadir, timeout=300)
                res.check(f"{v['name']} push {seg}")
                push[v["name"]].append(res.seconds)
        log(f"sync/{kind}: getting them back, interleaved")
        dest = make_dir(env.base / f"sync-{kind}-dest", mode=0o750)
        get = {v["name"]: [] for v in variants}
        for i, seg in enumerate(segs):
            for v in variants[i % 3:] + variants[:i % 3]:
                target = dest / seg
                res = run_tool(_get_argv(env, v, seg, str(target)), cwd=pg.datadir, timeout=300)
                res.check(f"{v['name']} get {seg}")
                get[v["name"]].append(res.seconds)
                if target.stat().st_size != SEG_SIZE:
                    raise RuntimeError(f"{v['name']} got {target.stat().st_size} bytes for {seg}")
                target.unlink()
        rmtree(dest)
        # What a synchronous call spends importing (a push of an archived segment: the whole path, duplicate).
        imports = importtime(importtime_argv(_push_argv(env, variants[0], f"pg_wal/{segs[0]}")), pg.datadir, runs=3)
        out.setdefault("importtime", {})[kind] = imports
        rows = {}
        for v in variants:
            rows[v["name"]] = {"push": _summary(push[v["name"]]), "get": _summary(get[v["name"]]),
                               "repo_mb": _repo_mb(env, v)}
        br = rows["pgBackRest gz (default)"]
        for name, row in rows.items():
            if name.startswith("pgpush"):
                row["ratios"] = {
                    "push_first_latency": round(ratio(br["push"]["first_ms"], row["push"]["first_ms"]), 2),
                    "push_steady_latency": round(ratio(br["push"]["steady_median_ms"], row["push"]["steady_median_ms"]), 2),
                    "push_throughput": round(ratio(row["push"]["seg_per_s"], br["push"]["seg_per_s"]), 2),
                    "get_first_latency": round(ratio(br["get"]["first_ms"], row["get"]["first_ms"]), 2),
                    "get_steady_latency": round(ratio(br["get"]["steady_median_ms"], row["get"]["steady_median_ms"]), 2),
                    "get_throughput": round(ratio(row["get"]["seg_per_s"], br["get"]["seg_per_s"]), 2),
                }
            log(f"sync/{kind} {name}: push first {row['push']['first_ms']} ms, steady {row['push']['steady_median_ms']} ms, "
                f"{row['push']['seg_per_s']} seg/s; get first {row['get']['first_ms']} ms, steady "
                f"{row['get']['steady_median_ms']} ms, {row['get']['seg_per_s']} seg/s")
        out["kinds"][kind] = rows
    return out


def _repo_mb(env, v: dict) -> float:
    if v["tool"] == "pgpush":
        root = v["obj"].repo_dir / "archive"
    else:
        root = env.pgbr.repo_path / "archive" / v["stanza"]
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return round(total / MB, 1)
