"""Scenario ``s3``: both tools with an S3 repository on the same SeaweedFS, over HTTPS.

One ``weed server -s3`` (tests/harness/seaweed.py, TLS with a self-signed certificate for
127.0.0.1 that both tools verify: ``repo1-storage-ca-file``) and one bucket.  pgpush keeps each
run's repository under ``pgpush/NAME``; pgBackRest 2.45 (``repo1-type=s3``, run on the database
host as postgres: no SSH at all) one repository under ``pgbackrest`` with a stanza per run.

1. **push**: sc_async's archive_clone with the S3 repositories: a backlog of random WAL archived
   by PostgreSQL through the tool's async push, process-max 1 and 2, each tool's default (pgpush
   zst, pgBackRest gz) and both at gz; runs of one process-max back to back, rotating order.
2. **replay**: sc_replay's replay_run, async get at process-max 1 and 2, from the repositories
   the gz push runs at process-max 2 left (both gz: equal compression).
3. **backup**: sc_backup with the S3 repositories (pgBackRest's backup runs on the database
   host), both at gz, process-max 1 and 2.
4. **fleet**: 8 clusters (copies of one source, stanzas c0..c7) each archiving its backlog
   through its own pgpush async parent (process-max 1) at once, into one repository in the
   bucket, then the same into one repository on the SFTP backup host (``env.repo_sshd``);
   aggregate seg/s, the CPU time the store used meanwhile (weed, or sshd with its finished
   sessions), and a check that every segment landed exactly once under its own stanza.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import sc_backup
from common import MB, SEG_SIZE, log, ratio, rmtree, wait_tools_idle
from pgbackrest import PgBackRestS3
from pgpushtool import Pgpush
from sc_async import VARIANTS, SftpRepo, archive_clone
from sc_replay import replay_run

BUCKET = "pgpush-bench"
FLEET = 8

PLAN = {  # push/replay N (random WAL), process-max values, backup pgbench scale, fleet N per cluster
    "quick": {"n": 8, "pms": [2], "scale": 5, "backup_pms": [1], "fleet_n": 4},
    "medium": {"n": 12, "pms": [1, 2], "scale": 10, "backup_pms": [1, 2], "fleet_n": 6},
    "full": {"n": 32, "pms": [1, 2], "scale": 30, "backup_pms": [1, 2], "fleet_n": 16},
}


class S3Repo:
    """The repositories in one bucket of the run's SeaweedFS, over HTTPS (same interface as
    sc_async.SftpRepo)."""

    kind = "s3"

    def __init__(self, env, bucket: str = BUCKET):
        from pgpush.storage.s3.storage import S3Storage

        self.env = env
        server = env.s3()
        self.server, self.bucket = server, bucket
        server.create_bucket(bucket)
        self.options = {
            "repo1-type": "s3", "repo1-path": "/pgpush", "repo1-s3-endpoint": server.https_endpoint,
            "repo1-s3-bucket": bucket, "repo1-s3-region": "us-east-1", "repo1-s3-uri-style": "path",
            "repo1-s3-key": server.access_key, "repo1-s3-key-secret": server.secret_key,
            "repo1-storage-ca-file": str(server.ca_file),
        }
        self.pgbr = PgBackRestS3(env.base, {
            "host": server.host, "port": server.https_port, "bucket": bucket, "region": "us-east-1",
            "key": server.access_key, "secret": server.secret_key, "ca_file": server.ca_file, "path": "/pgbackrest",
        })
        # the bench's own view of the bucket (sizes, checks, clean-up): pgpush's S3 client
        self.storage = S3Storage(server.https_endpoint, bucket, "", key=server.access_key, secret=server.secret_key,
                                 uri_style="path", ca_file=str(server.ca_file), timeout=60)

    def pgpush(self, name: str, cluster, **kw) -> Pgpush:
        return Pgpush(self.env.base, name, None, cluster=cluster, repo_options=self.options, **kw)

    def _prefix(self, tool: str, obj, stanza: str) -> str:
        if tool == "pgpush":
            return obj.global_options["repo1-path"].strip("/")
        return f"pgbackrest/archive/{stanza}"

    def keys(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object below ``prefix/``."""
        from pgpush.storage.s3.client import xml_children, xml_text

        out = []
        for page in self.storage._list_pages(prefix.strip("/") + "/", None, f"list '{prefix}'"):
            out += [(xml_text(c, "Key"), int(xml_text(c, "Size", "0") or 0)) for c in xml_children(page, "Contents")]
        return out

    def size_mb(self, tool: str, obj, stanza: str) -> float:
        return round(sum(size for _, size in self.keys(self._prefix(tool, obj, stanza))) / MB, 1)

    def remove(self, tool: str, obj, stanza: str) -> None:
        self.storage.delete_tree(self._prefix(tool, obj, stanza))

    def close(self) -> None:
        self.storage.close()


# ----------------------------------------------------------------------------------------------


def run(env, mode: str) -> dict:
    plan = PLAN[mode]
    repo = S3Repo(env)
    server = env.seaweed
    out: dict = {"store": f"SeaweedFS {_weed_version(server)}", "endpoint": server.https_endpoint, "plan": plan}
    try:
        src = env.source("random", plan["n"])
        out["push"] = _push(env, repo, src, plan["pms"])
        out["replay"] = _replay(env, repo, src, plan["pms"])
        log(f"s3 backup: pgbench scale {plan['scale']}, both gz, process-max {plan['backup_pms']}")
        out["backup"] = sc_backup.run(env, mode, repo=repo, scale=plan["scale"],
                                      plan=[(pm, "gz", "gz") for pm in plan["backup_pms"]])
        out["fleet"] = _fleet(env, repo, env.source("random", plan["fleet_n"]))
    finally:
        repo.close()
        env.stop_s3()
    out["targets"] = _targets(out)
    return out


def _weed_version(server) -> str:
    import subprocess

    try:
        text = subprocess.run([server.weed, "version"], capture_output=True, text=True, timeout=30).stdout
        return text.split()[2] if len(text.split()) > 2 else text.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def _push(env, repo: S3Repo, src, pms: list[int]) -> dict:
    out: dict = {"runs": []}
    for k, pm in enumerate(pms):
        for j in range(len(VARIANTS)):
            label, tool, compress = VARIANTS[(j + k) % len(VARIANTS)]
            tag = f"s{k}-push{src.n}-pm{pm}-{tool}-{compress or 'def'}"
            # the gz runs (pgBackRest's default is gz) at the largest process-max feed the replay
            keep = pm == max(pms) and (compress == "gz" or tool == "pgbackrest")
            res = archive_clone(env, src, tool, compress, pm, tag, keep_repo=keep, repo=repo)
            res.update({"label": label, "kind": src.kind, "n": src.n})
            if keep and res.get("finished"):
                env.shared.setdefault("filled", {})[(src.kind, src.n, tool, "s3")] = res.pop("repo")
            res.pop("repo", None)
            log(f"s3 push N={src.n} pm={pm} {label}: {res.get('seg_per_s')} seg/s ({res.get('seconds')} s, "
                f"failed_count {res.get('failed_count')}, repo {res.get('repo_mb')} MB)")
            out["runs"].append(res)
    out["comparisons"] = []
    for pm in pms:
        find = {r["label"]: r for r in out["runs"] if r["process_max"] == pm}
        br = find.get("pgBackRest gz (default)")
        out["comparisons"].append({"kind": src.kind, "n": src.n, "process_max": pm,
                                   "defaults": _r(find.get("pgpush zst (default)"), br),
                                   "same_gz": _r(find.get("pgpush gz"), br)})
    return out


def _replay(env, repo: S3Repo, src, pms: list[int]) -> dict:
    filled = env.shared.setdefault("filled", {})
    for tool in ("pgpush", "pgbackrest"):  # a push run that failed left no repository: fill one at gz
        if (src.kind, src.n, tool, "s3") not in filled:
            log(f"s3 replay: filling the {tool} repository (async push, gz, process-max 2)")
            res = archive_clone(env, src, tool, "gz", 2, f"s3-fill-{src.n}-{tool}", keep_repo=True, repo=repo)
            if not res.get("finished"):
                raise RuntimeError(f"filling the {tool} S3 repo failed: {res.get('error')}")
            filled[(src.kind, src.n, tool, "s3")] = res["repo"]
    out: dict = {"runs": []}
    for k, pm in enumerate(pms):
        for tool in (("pgpush", "pgbackrest") if k % 2 == 0 else ("pgbackrest", "pgpush")):
            tag = f"s3r{src.n}-{k}-{tool}-pm{pm}"
            res = replay_run(env, src, tool, True, pm, tag, repo_at=repo)
            res["n"] = src.n
            log(f"s3 replay N={src.n} {tool} async pm={pm}: {res.get('seg_per_s')} seg/s "
                f"({res.get('restored_segments')} segments in {res.get('seconds')} s)")
            out["runs"].append(res)
    out["comparisons"] = []
    for pm in pms:
        p = next((r for r in out["runs"] if (r["tool"], r["process_max"]) == ("pgpush", pm)), None)
        b = next((r for r in out["runs"] if (r["tool"], r["process_max"]) == ("pgbackrest", pm)), None)
        out["comparisons"].append({"n": src.n, "process_max": pm, "ratio": _r(p, b)})
    return out


def _r(a, b):
    value = ratio(a and a.get("seg_per_s"), b and b.get("seg_per_s"))
    return round(value, 2) if value is not None else None


# ----------------------------------------------------------------------------------------------
# fleet: 8 stanzas pushing at once into one repository


def _fleet(env, s3repo: S3Repo, src) -> dict:
    out: dict = {"clusters": FLEET, "segments_per_cluster": len(src.segments), "process_max": 1, "runs": []}
    for repo in (s3repo, SftpRepo(env)):
        res = _fleet_run(env, repo, src)
        log(f"s3 fleet {repo.kind}: {FLEET} x {len(src.segments)} segments, {res.get('seg_per_s')} seg/s aggregate "
            f"({res.get('seconds')} s, store CPU {res.get('store_cpu_s')} s); {'verified' if res.get('verified') else 'NOT verified: ' + str(res.get('problems'))}")
        out["runs"].append(res)
    by = {r["repo"]: r for r in out["runs"]}
    value = ratio(by.get("s3", {}).get("seg_per_s"), by.get("sftp", {}).get("seg_per_s"))
    out["s3_over_sftp"] = round(value, 2) if value is not None else None
    return out


def _fleet_run(env, repo, src) -> dict:
    tag = f"fleet-{repo.kind}"
    clusters, objs = [], []
    n = len(src.segments)
    result: dict = {"repo": repo.kind, "segments": FLEET * n}

    def prepare(i: int):
        clone = env.track(src.clone(env.base / f"{tag}-c{i}"))
        clusters.append(clone)
        clone.start()
        obj = repo.pgpush(f"{tag}-c{i}", clone, repo_name=tag, stanza=f"c{i}")
        obj.stanza_create()
        # no checkpoint during the run: it would remove the .done files being waited for
        clone.set_conf({"archive_command": obj.command_line("push", "%p", archive_async=True, process_max=1),
                        "checkpoint_timeout": "1h"})
        return clone, obj

    try:
        t_setup = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:  # set-up only, not timed
            prepared = list(pool.map(prepare, range(FLEET)))
        clusters = [c for c, _ in prepared]
        objs = [o for _, o in prepared]
        log(f"s3 fleet {repo.kind}: {FLEET} clusters started and stanzas created in {time.monotonic() - t_setup:.1f}s")
        done = [c.wal_dir / "archive_status" / f"{src.ready_segments[-1]}.done" for c in clusters]
        timeout = 120 + 2 * FLEET * n
        errors: list[str] = []

        def reload(c):
            try:
                c.sql("select pg_reload_conf()")
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(str(exc))

        threads = [threading.Thread(target=reload, args=(c,)) for c in clusters]
        store_pid = env.seaweed.pid if repo.kind == "s3" else env.repo_sshd.pid
        cpu0 = _cpu_seconds(store_pid)
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pending = set(done)
        while pending and time.monotonic() < t0 + timeout:
            pending = {path for path in pending if not path.exists()}
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        finished = not pending
        wait_tools_idle(timeout=30)  # the parents' connections closed: sshd has reaped its sessions
        time.sleep(0.5)
        cpu1 = _cpu_seconds(store_pid)
        failed = sum(c.archiver_stats()["failed_count"] for c in clusters)
        result.update({"finished": finished, "seconds": round(elapsed, 2), "failed_count": failed,
                       "seg_per_s": round(FLEET * n / elapsed, 3) if finished else None,
                       "mb_per_s": round(FLEET * n * SEG_SIZE / MB / elapsed, 1) if finished else None,
                       "store_cpu_s": round(cpu1 - cpu0, 1) if cpu0 is not None and cpu1 is not None else None})
        if errors or not finished:
            result["error"] = f"not caught up after {timeout}s; {errors}\n{objs[0].log_tail()[-2000:] if objs else ''}"
        result["problems"] = _verify(repo, tag, objs, src.segments)
        result["verified"] = finished and not result["problems"]
    finally:
        for c in clusters:
            env.drop_cluster(c)
        left = wait_tools_idle(timeout=60)
        if left:
            result["killed_leftover_pids"] = left
        for i in range(FLEET):
            rmtree(env.base / f"{tag}-c{i}")
        if objs:
            repo.remove("pgpush", objs[0], "")
    return result


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU time of ``pid`` and of its children it has waited for (sshd: its finished sessions)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, TypeError, ValueError, IndexError):
        return None


def _verify(repo, tag: str, objs: list[Pgpush], segments: list[str]) -> list[str]:
    """Every segment exactly once under each stanza's archive/ (and nothing else there)."""
    problems = []
    for obj in objs:
        if repo.kind == "s3":
            root = f"{obj.global_options['repo1-path'].strip('/')}/archive/{obj.stanza}"
            names = [key.rsplit("/", 1)[-1] for key, _ in repo.keys(root)]
        else:
            names = [p.name for p in (obj.repo_dir / "archive" / obj.stanza).rglob("*") if p.is_file()]
        seg_files = [name for name in names if len(name) > 25 and name[24] == "-"]
        counts: dict[str, int] = {}
        for name in seg_files:
            counts[name[:24]] = counts.get(name[:24], 0) + 1
        missing = [s for s in segments if s not in counts]
        twice = [s for s, c in counts.items() if c > 1]
        foreign = [s for s in counts if s not in segments]
        if missing or twice or foreign:
            problems.append(f"{tag} stanza {obj.stanza}: {len(missing)} missing {missing[:3]}, {len(twice)} more "
                            f"than once {twice[:3]}, {len(foreign)} not of this cluster {foreign[:3]}")
    return problems


# ----------------------------------------------------------------------------------------------


def _targets(out: dict) -> list[dict]:
    targets = []
    for row in out.get("push", {}).get("comparisons", []):
        if row["same_gz"] is not None:
            targets.append({"name": f"push >= 1.0x pgBackRest at equal compression (gz), random N={row['n']} "
                                    f"pm={row['process_max']}", "value": f"{row['same_gz']:.2f}x",
                            "met": row["same_gz"] >= 1.0})
    for row in out.get("replay", {}).get("comparisons", []):
        if row["ratio"] is not None:
            targets.append({"name": f"replay (async get) >= 1.0x pgBackRest at equal compression (gz), random "
                                    f"N={row['n']} pm={row['process_max']}", "value": f"{row['ratio']:.2f}x",
                            "met": row["ratio"] >= 1.0})
    for row in out.get("backup", {}).get("comparisons", []):
        if row.get("backup") is not None:
            targets.append({"name": f"backup >= 1.0x pgBackRest at equal compression (gz), pm={row['process_max']}",
                            "value": f"{row['backup']:.2f}x", "met": row["backup"] >= 1.0})
    fleet = out.get("fleet")
    if fleet and fleet.get("runs"):
        ok = all(r.get("verified") for r in fleet["runs"])
        targets.append({"name": f"fleet: every segment of {fleet['clusters']} stanzas archived exactly once under its "
                                "own stanza (S3 and SFTP)", "value": "yes" if ok else "no", "met": ok})
    return targets
