#!/usr/bin/env python3
"""pgpush vs pgBackRest 2.45, side by side on this machine, in the same run (`make bench`).

    .venv/bin/python bench/run.py [--quick | --medium] [--only NAME[,NAME]] [--keep] [--no-docs]

Writes bench/results/<date>.json and regenerates docs/benchmarks.md.  It reports; it never
asserts timings.  Needs root (PostgreSQL runs as postgres, sshd as root), the built
dist/pgpush.pyz (dist/empty.pyz is built here when missing), /usr/bin/pgbackrest and, for the
``s3`` and ``multirepo`` scenarios, .venv/bin/weed (scripts/setup-s3.sh) and openssl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, cpu_pressure, loadavg, log, procs

SCENARIOS = ["hotpath", "sync", "async-push", "replay", "backup", "s3", "multirepo"]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


def _cmd(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (proc.stdout or proc.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def machine() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
    try:
        debian = Path("/etc/debian_version").read_text().strip()
    except OSError:
        debian = "unknown"
    from pgbackrest import version as pgbr_version

    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu": cpu,
        "kernel": platform.release(),
        "debian": debian,
        "python": _cmd(["/usr/bin/python3", "--version"]),
        "postgresql": _cmd(["/usr/lib/postgresql/15/bin/postgres", "--version"]),
        "openssh": _cmd(["ssh", "-V"]),
        "pgbackrest": pgbr_version(),
        "pgpush": _cmd([str(ROOT / "dist" / "pgpush.pyz"), "version"]),
        "pgpush_commit": _cmd(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "pgpush_tree_dirty": bool(_cmd(["git", "-C", str(ROOT), "status", "--porcelain", "--", "pgpush"]) != "unknown"),
        "zipapp_built": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime((ROOT / "dist" / "pgpush.pyz").stat().st_mtime)),
        "head_commit_time": _cmd(["git", "-C", str(ROOT), "log", "-1", "--format=%cd", "--date=format-local:%Y-%m-%d %H:%M:%S"]),
    }


def ensure_zipapps() -> None:
    pyz, empty = ROOT / "dist" / "pgpush.pyz", ROOT / "dist" / "empty.pyz"
    if not pyz.exists():
        sys.exit("dist/pgpush.pyz is missing: run `make zipapp` (or build_zipapp.py --output dist/pgpush.pyz)")
    if not empty.exists():
        log("building dist/empty.pyz")
        subprocess.run([sys.executable, str(ROOT / "build_zipapp.py"), "--empty", "--output", str(empty)], check=True,
                       cwd=ROOT)


def other_bench_runs() -> list[int]:
    """PIDs of other bench/run.py processes (a concurrent run skews both and competes for the CPUs)."""
    mine = {os.getpid(), os.getppid()}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"bench/run.py") for a in argv) and b"timeout" not in argv[0]:
            found.append(int(entry))
    return found


def has_backup_commands() -> bool:
    out = subprocess.run([str(ROOT / "dist" / "pgpush.pyz"), "--help"], capture_output=True, text=True, timeout=60).stdout
    return bool(re.search(r"^\s+backup\s", out, re.M)) and bool(re.search(r"^\s+restore\s", out, re.M))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small N (smoke test, about 3 minutes)")
    size.add_argument("--medium", action="store_true", help="N between --quick and the full run (about 12 minutes)")
    ap.add_argument("--only", help=f"comma-separated scenarios among {', '.join(SCENARIOS)}")
    ap.add_argument("--keep", action="store_true", help="keep the work dir under /tmp/pgpush-bench")
    ap.add_argument("--no-docs", action="store_true", help="do not regenerate docs/benchmarks.md")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/run.py needs root (PostgreSQL runs as postgres, sshd as root)")
    only = [s.strip() for s in args.only.split(",")] if args.only else list(SCENARIOS)
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown:
        sys.exit(f"unknown scenario(s) {unknown}; choose among {SCENARIOS}")
    mode = "quick" if args.quick else "medium" if args.medium else "full"
    ensure_zipapps()
    procs.become_subreaper()
    reaper = procs.start_reaper(1.0)

    import sc_async
    import sc_backup
    import sc_hotpath
    import sc_multirepo
    import sc_replay
    import sc_s3
    import sc_sync
    from env import BenchEnv

    modules = {"hotpath": sc_hotpath, "sync": sc_sync, "async-push": sc_async, "replay": sc_replay, "backup": sc_backup,
               "s3": sc_s3, "multirepo": sc_multirepo}
    started = time.time()
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "mode": mode,
        "machine": machine(),
        "load_before": loadavg(),
        "cpu_pressure_before": cpu_pressure(),
        "scenarios": {},
    }
    log(f"pgpush bench ({results['mode']}): {', '.join(only)}; load average {results['load_before']}")
    env = BenchEnv(keep=args.keep)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y-%m-%d-%H%M%S')}-{mode}.json"
    try:
        env.start()
        for name in only:
            if name == "backup" and not has_backup_commands():
                results["scenarios"][name] = {"skipped": "pgpush has no backup/restore command"}
                continue
            log(f"=== {name} ===")
            t0 = time.monotonic()
            load0, psi0, others0 = loadavg(), cpu_pressure(), other_bench_runs()
            try:
                res = modules[name].run(env, mode)
            except Exception as exc:  # noqa: BLE001 - a failed scenario is reported, the others still run
                traceback.print_exc()
                res = {"error": f"{type(exc).__name__}: {exc}"[:4000]}
            res["seconds"] = round(time.monotonic() - t0, 1)
            res["load_before"], res["load_after"] = load0, loadavg()
            res["cpu_pressure_before"], res["cpu_pressure_after"] = psi0, cpu_pressure()
            others = sorted(set(others0) | set(other_bench_runs()))
            if others:
                res["concurrent_bench_runs"] = others
                log(f"warning: other bench runs were running at the same time: {others}")
            results["scenarios"][name] = res
            out.write_text(json.dumps(results, indent=2) + "\n")  # partial results survive an interrupted run
            log(f"=== {name} done in {res['seconds']}s (load {res['load_after']}) ===")
    finally:
        env.cleanup()
        reaper.set()
    results["load_after"] = loadavg()
    results["cpu_pressure_after"] = cpu_pressure()
    results["seconds"] = round(time.time() - started, 1)
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"results: {out}")
    if not args.no_docs:
        import report

        DOC.write_text(report.render(results, RESULTS))
        log(f"wrote {DOC}")
    failed = [n for n, r in results["scenarios"].items() if "error" in r]
    if failed:
        log(f"scenarios that failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
