"""Scenario ``multirepo``: archiving into two repositories at once (repo1 on the SFTP backup host,
repo2 in S3) beside each of them alone, for pgpush and pgBackRest 2.45.

The archive throughput of sc_async's archive_clone (a backlog of random, incompressible WAL
archived by PostgreSQL through the tool: async push at process-max 2, then a synchronous push
per segment), both tools at gz (equal compression), for three placements of the archive:

* **sftp / ssh**: one repository on the backup host through the run's sshd: pgpush over SFTP,
  pgBackRest in repo-host mode over SSH (pgBackRest 2.45 has no SFTP repository type; 2.46 added
  it, so its repo-host mode is what stands for "a backup host over SSH" here, as in sections 2-5);
* **s3**: one repository in a bucket of the run's SeaweedFS, over HTTPS (as sc_s3);
* **sftp+s3 / ssh+s3**: both at once (repo1 as the first, ``repo2-type=s3`` as the second).

The six runs of one mode go back to back in rotating order.  After every run the repositories
are listed (files in the SFTP directory, keys in the bucket): a run whose repositories do not
each hold every segment it archived is marked invalid (its figure is not reported, its ratios are
left out) rather than counted, since pgpush acknowledges a segment only once it is in every
repository, and a row claiming two repositories must have fed both.
"""

from __future__ import annotations

from pathlib import Path

from common import log, rmtree
from pgbackrest import PgBackRestSshS3
from pgpushtool import Pgpush
from sc_async import SftpRepo, archive_clone
from sc_s3 import S3Repo

BUCKET = "pgpush-multirepo"
COMPRESS = "gz"  # both tools at the same compression (pgBackRest's default)
PM = 2  # process-max of the async runs

PLAN = {"quick": 8, "medium": 12, "full": 16}  # N of random WAL (the source adds its base backup's segments)

MODES = [("async", PM), ("sync", None)]

PLACEMENTS = ["one", "s3", "two"]  # sftp (pgBackRest: ssh) alone, s3 alone, both at once
TOOLS = ["pgpush", "pgbackrest"]
LABELS = {
    ("pgpush", "one"): "pgpush sftp", ("pgpush", "s3"): "pgpush s3", ("pgpush", "two"): "pgpush sftp+s3",
    ("pgbackrest", "one"): "pgBackRest ssh (repo host)*", ("pgbackrest", "s3"): "pgBackRest s3",
    ("pgbackrest", "two"): "pgBackRest ssh+s3*",
}
NOTE = ("\\* pgBackRest 2.45 has no SFTP repository type (2.46 added it): its repo1 is repo-host mode over SSH, "
        "through the same sshd as pgpush's SFTP repository; its repo2 is `repo2-type=s3` in the same SeaweedFS "
        "bucket over HTTPS.")


def _segment_names(names) -> set[str]:
    """WAL segment names among archived file names (``SEGMENT-SHA1[.EXT]``; not history,
    backup-label or temporary files)."""
    return {n[:24] for n in names if len(n) > 25 and n[24] == "-" and not n.endswith(".tmp")}


def _dir_segments(root: Path) -> set[str]:
    return _segment_names(p.name for p in root.rglob("*") if p.is_file()) if root.is_dir() else set()


class SftpS3Repo:
    """Two repositories at once (the interface of sc_async.SftpRepo for archive_clone): repo1 on
    the SFTP backup host (pgBackRest: repo host over SSH), repo2 in ``s3``'s bucket."""

    kind = "sftp+s3"

    def __init__(self, env, s3: S3Repo):
        self.env, self.s3 = env, s3
        server = s3.server
        self.pgbr = PgBackRestSshS3(env.base, env.repo_sshd, env.db_sshd, {
            "host": server.host, "port": server.https_port, "bucket": s3.bucket, "region": "us-east-1",
            "key": server.access_key, "secret": server.secret_key, "ca_file": server.ca_file, "path": "/pgbackrest-two",
        })
        self.sftp = SftpRepo(env)  # repo1: the SFTP directory, or this pgBackRest's repository host
        self.sftp.pgbr = self.pgbr

    def pgpush(self, name: str, cluster, **kw) -> Pgpush:
        repo2 = {"repo2-" + key[6:]: value for key, value in self.s3.options.items() if key.startswith("repo1-")}
        repo2["repo2-path"] = f"/pgpush-two/{name}"
        return Pgpush(self.env.base, name, self.env.repo_sshd, cluster=cluster, extra_options=repo2, **kw)

    def _s3_prefix(self, tool: str, obj) -> str:
        return obj.global_options["repo2-path"].strip("/") if tool == "pgpush" else "pgbackrest-two"

    def _s3_archive(self, tool: str, obj, stanza: str) -> str:
        """repo2's archive of one run: pgpush's stanza is its own (``obj.stanza``), pgBackRest's the run's tag."""
        return f"{self._s3_prefix(tool, obj)}/archive/{obj.stanza if tool == 'pgpush' else stanza}"

    def archived(self, tool: str, obj, stanza: str) -> dict[str, set[str]]:
        one = archived(self.sftp, tool, obj, stanza)["repo1"]
        two = _segment_names(key.rsplit("/", 1)[-1] for key, _ in self.s3.keys(self._s3_archive(tool, obj, stanza)))
        return {"repo1": one, "repo2": two}

    def size_mb(self, tool: str, obj, stanza: str) -> float:
        s3 = sum(size for _, size in self.s3.keys(self._s3_archive(tool, obj, stanza)))
        return round(self.sftp.size_mb(tool, obj, stanza) + s3 / (1024 * 1024), 1)

    def remove(self, tool: str, obj, stanza: str) -> None:
        self.sftp.remove(tool, obj, stanza)
        self.s3.storage.delete_tree(self._s3_archive(tool, obj, stanza))


def archived(repo, tool: str, obj, stanza: str) -> dict[str, set[str]]:
    """The segments each repository of ``repo`` holds for one run: ``{"repo1": {...}[, "repo2": {...}]}``."""
    if isinstance(repo, SftpS3Repo):
        return repo.archived(tool, obj, stanza)
    if isinstance(repo, S3Repo):
        prefix = repo._prefix(tool, obj, stanza)
        prefix = prefix if tool != "pgpush" else f"{prefix}/archive/{obj.stanza}"
        return {"repo1": _segment_names(key.rsplit("/", 1)[-1] for key, _ in repo.keys(prefix))}
    root = obj.repo_dir / "archive" / obj.stanza if tool == "pgpush" else obj.repo_path / "archive" / stanza
    return {"repo1": _dir_segments(root)}


def check_repos(held: dict[str, set[str]], segments: list[str]) -> tuple[str | None, dict[str, list[str]]]:
    """Why a run is invalid (a repository lacks segments it archived; None when each holds all),
    and the first few missing segments of each repository that lacks some."""
    problems, missing = [], {}
    for label, names in sorted(held.items()):
        lacking = [s for s in segments if s not in names]
        if lacking:
            problems.append(f"{label} holds {len(segments) - len(lacking)} of {len(segments)} segments")
            missing[label] = lacking[:3]
    return "; ".join(problems) or None, missing


# ----------------------------------------------------------------------------------------------


def run(env, mode: str) -> dict:
    n = PLAN[mode]
    s3 = S3Repo(env, BUCKET)
    repos = {"one": SftpRepo(env), "s3": s3, "two": SftpS3Repo(env, s3)}
    out: dict = {"n": n, "compress": COMPRESS, "process_max": PM, "note": NOTE, "runs": []}
    try:
        src = env.source("random", n)
        out["segments"] = len(src.segments)
        variants = [(tool, place) for place in PLACEMENTS for tool in TOOLS]
        for k, (how, pm) in enumerate(MODES):
            for j in range(len(variants)):
                tool, place = variants[(j + 2 * k) % len(variants)]
                tag = f"m{k}-{how}-{place}-{tool}"
                res = _one_run(env, src, repos[place], tool, how, pm, tag)
                res.update({"label": LABELS[(tool, place)], "place": place, "mode": how, "n": n, "order": j + 1})
                log(f"multirepo {how}{f' pm={pm}' if pm else ''} {res['label']}: "
                    + (f"{res.get('seg_per_s')} seg/s ({res.get('seconds')} s, failed_count {res.get('failed_count')})"
                       if not res.get("invalid") else f"INVALID: {res['invalid']}"))
                out["runs"].append(res)
    finally:
        s3.close()
        env.stop_s3()
    out["comparisons"] = _compare(out["runs"])
    out["targets"] = _targets(out)
    return out


def _one_run(env, src, repo, tool: str, how: str, pm: int | None, tag: str) -> dict:
    res = archive_clone(env, src, tool, COMPRESS, pm or 1, tag, keep_repo=True, repo=repo,
                        asynchronous=how == "async")
    if how != "async":
        res["process_max"] = None
    kept = res.pop("repo", None)
    obj = kept["obj"] if kept and tool == "pgpush" else repo.pgbr
    try:
        if res.get("finished"):
            held = archived(repo, tool, obj, tag)
            res["held"] = {label: len(names) for label, names in held.items()}
            why, missing = check_repos(held, src.segments)
            if why:  # a figure for repositories that did not all get the WAL is no figure
                res["invalid"], res["missing"] = why, missing
                res["seg_per_s_unverified"] = res.pop("seg_per_s", None)
                res["seg_per_s"] = None
                res["mb_per_s"] = None
    finally:
        if kept:
            repo.remove(tool, obj, tag)
        rmtree(env.base / f"pgpush-{tag}")
    return res


def _seg(runs: list[dict], mode: str, tool: str, place: str) -> float | None:
    for r in runs:
        if (r["mode"], r["tool"], r["place"]) == (mode, tool, place):
            return r.get("seg_per_s")
    return None


def _div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _compare(runs: list[dict]) -> list[dict]:
    """Per mode: pgpush / pgBackRest per placement, and each tool's two repositories / one."""
    rows = []
    for how, pm in MODES:
        row: dict = {"mode": how, "process_max": pm}
        for place in PLACEMENTS:
            row[f"pgpush_over_pgbackrest_{place}"] = _div(_seg(runs, how, "pgpush", place),
                                                          _seg(runs, how, "pgbackrest", place))
        for tool in TOOLS:
            two = _seg(runs, how, tool, "two")
            row[f"{tool}_two_over_one"] = _div(two, _seg(runs, how, tool, "one"))
            row[f"{tool}_two_over_s3"] = _div(two, _seg(runs, how, tool, "s3"))
        rows.append(row)
    return rows


def _targets(out: dict) -> list[dict]:
    targets = []
    two = [r for r in out["runs"] if r["place"] == "two" and r["tool"] == "pgpush"]
    ok = bool(two) and all(r.get("finished") and not r.get("invalid") for r in two)
    targets.append({"name": "pgpush with two repositories (SFTP + S3): every archived segment in both",
                    "value": "yes" if ok else "no", "met": ok})
    for row in out["comparisons"]:
        value = row["pgpush_over_pgbackrest_two"]
        if value is not None:
            where = f"{row['mode']}" + (f" pm={row['process_max']}" if row["process_max"] else "")
            targets.append({"name": f"two repositories >= 1.0x pgBackRest at equal compression (gz), {where}",
                            "value": f"{value:.2f}x", "met": value >= 1.0})
    return targets
