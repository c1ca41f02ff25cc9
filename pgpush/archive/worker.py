"""The worker process: runs file tasks for a parent, one connection per
repository (opened on first use) for its whole life.

Tasks arrive as JSON lines on stdin; each gets one JSON line on stdout:
``{"ok": true, ...}`` or ``{"ok": false, "code": N, "message": ..., "global": bool}``
(``global`` when the failure is not tied to the file: the repository is
unreachable), carrying the task's ``seq`` back so the parent never takes a
stray line for an answer.  A push task names its repository (``"repo": N``,
repo1 when absent); messages are the repository's own, the parent names the
repository in them.  The worker exits when stdin closes.
"""

from __future__ import annotations

import json
import os
import sys

from pgpush.archive import core
from pgpush.config import Config
from pgpush.errors import PgPushError, RepoInvalidError, WalNotFound
from pgpush.log import LOG
from pgpush.repo import walarchive
from pgpush.repo.repository import Repository


class Worker:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.repos: dict[int, Repository] = {}
        self.checked: str | None = None  # the data directory found to be the stanza's cluster
        self.several = len(cfg.root.repo_indexes()) > 1

    def repository(self, index: int = 1) -> Repository:
        """Repository ``index``'s connection, opened on first use and kept."""
        repo = self.repos.get(index)
        if repo is None:
            repo = self.repos[index] = Repository.from_config(self.cfg.repo(index))
        return repo

    def push(self, task: dict) -> dict:
        index = int(task.get("repo", 1))
        warning = core.push_file(self.repository(index), task["path"])
        name = os.path.basename(task["path"])
        where = f"repo{index}: " if self.several else ""
        LOG.info(f"{where}pushed WAL file '{name}' to the archive asynchronously")
        return {"ok": True, "warning": warning}

    def get(self, task: dict) -> dict:
        """Fetch a segment into the spool: temp name, verified, then renamed.

        The cluster recovering must be the stanza's (44 otherwise, as a sync get says): checked
        on the first file, so WAL of one cluster is never served to another.
        """
        name, directory = task["name"], task["dir"]
        if task.get("pgdata") and self.checked != task["pgdata"]:
            core.check_local_cluster(self.repository(), task["pgdata"])
            self.checked = task["pgdata"]
        try:
            core.fetch_to(self.repository(), name, os.path.join(directory, name))
        except WalNotFound:
            return {"ok": True, "missing": True}
        return {"ok": True}

    def drop(self, task: dict) -> dict:
        repo = self.repository(int(task.get("repo", 1)))
        for name in task["names"]:
            walarchive.record_dropped(repo, name, task["reason"])
        return {"ok": True}

    def refresh(self, task: dict) -> dict:
        core._refresh_backups(self.repository(int(task.get("repo", 1))))
        return {"ok": True}

    def handle(self, task: dict) -> dict:
        try:
            return getattr(self, task["op"])(task)
        except PgPushError as exc:
            is_global = isinstance(exc, RepoInvalidError)
            return {"ok": False, "code": exc.code, "message": exc.message, "global": is_global}
        except Exception as exc:  # noqa: BLE001 - a bug fails this one task (025); the worker keeps serving
            return {"ok": False, "code": 25, "message": f"{type(exc).__name__}: {exc}", "global": False}


def run(cfg: Config) -> int:
    group = "archive-push-async" if cfg.args[:1] == ["push"] else "archive-get-async"
    LOG.configure(cfg, group, exec_id=cfg.get("exec-id"), console=False)
    worker = Worker(cfg)
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        task = json.loads(line)
        result = {**worker.handle(task), "seq": task.get("seq")}  # says which task this answers
        out.write(json.dumps(result).encode() + b"\n")
        out.flush()
    for repo in worker.repos.values():
        repo.storage.close()
    return 0
