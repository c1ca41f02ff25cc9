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
import time

from pgpush.archive import core
from pgpush.config import Config
from pgpush.errors import PathCreateError, PgPushError, RepoInvalidError, WalNotFound
from pgpush.log import LOG
from pgpush.repo import walarchive
from pgpush.repo.repository import Repository

DOWN_HOLD = 30.0  # get: seconds a repository found unreachable is asked after the others


class Worker:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.repos: dict[int, Repository] = {}  # one connection per repository, opened on first use
        self.checked: set[tuple[int, str]] = set()  # get: (repository, data directory) found to be the stanza's cluster
        self.down: dict[int, float] = {}  # get: when each repository was last found unreachable (monotonic)
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
        on the first file from each repository, so WAL of one cluster is never served to another.
        With several repositories the first that has it whole gives it (:meth:`_get_several`).
        """
        views = self.cfg.repos()
        if len(views) > 1:
            return self._get_several(task, views)
        try:
            self._get_from(views[0], task)
        except WalNotFound:
            return {"ok": True, "missing": True}
        return {"ok": True}

    def _get_several(self, task: dict, views: list[Config]) -> dict:
        """The segment from the first repository that has it whole and verified (as a sync get:
        :func:`pgpush.archive.core.get_from_repos`).  "Missing" only when every repository answered
        that it is not there; when one could not answer and none had it, that repository's error
        (global only when no repository could answer: the parent then stops asking).

        A repository found unreachable is asked last for :data:`DOWN_HOLD` seconds: each file would
        otherwise wait out its ``repoN-host-timeout`` before the next repository is asked.  It is
        still asked before a file is called missing, so the verdict is the same, only sooner.
        """
        failures: dict[int, tuple[bool, PgPushError]] = {}
        for view in self._order(views):
            try:
                self._get_from(view, task)
            except WalNotFound:
                continue
            except PathCreateError:
                raise  # the spool: no other repository would do better
            except PgPushError as exc:
                unreachable = isinstance(exc, RepoInvalidError)
                if unreachable:
                    self.down[view.repo_index] = time.monotonic()
                LOG.warn(f"{core.warning_text(exc, view.repo_label)}; trying the other repositories")
                failures[view.repo_index] = (unreachable, exc.in_repo(view.repo_label))
                continue
            self.down.pop(view.repo_index, None)
            return {"ok": True} if view is views[0] else {"ok": True, "from": view.repo_label}
        if not failures:
            return {"ok": True, "missing": True}
        first = failures[min(failures)][1]  # in priority order, as a sync get reports it
        every = len(failures) == len(views) and all(unreachable for unreachable, _ in failures.values())
        return {"ok": False, "code": first.code, "message": first.message, "global": every}

    def _order(self, views: list[Config]) -> list[Config]:
        """``views`` in priority order, those found unreachable in the last DOWN_HOLD seconds last."""
        now = time.monotonic()
        held = {i for i, when in self.down.items() if now - when < DOWN_HOLD}
        return [v for v in views if v.repo_index not in held] + [v for v in views if v.repo_index in held]

    def _get_from(self, view: Config, task: dict) -> None:
        """The segment from one repository into the spool (WalNotFound when it is not there)."""
        repo = self.repository(view.repo_index)
        pgdata = task.get("pgdata")
        if pgdata and (view.repo_index, pgdata) not in self.checked:
            core.check_local_cluster(repo, pgdata)
            self.checked.add((view.repo_index, pgdata))
        core.fetch_to(repo, task["name"], os.path.join(task["dir"], task["name"]))

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
