"""The pure state of async push with several repositories (pgpush/archive/push_state.py): what goes
where next, when a failed repository is tried again, what the errors say, and the spool markers."""

from __future__ import annotations

import os

import pytest

from pgpush.archive import push_state
from pgpush.archive.push_state import Markers, RepoHealth, combined, dropped_list, missing, plan
from pgpush.errors import ArchiveDuplicateError, PgPushError, RepoInvalidError

S = [f"0000000100000000000000{i:02X}" for i in range(1, 12)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def healthy(_index: int) -> int | None:
    return None


def test_plan_all_healthy_is_oldest_first_each_file_to_each_repository():
    assert plan(S[:3], {}, [1, 2], healthy, set(), 10) == [
        (S[0], 1), (S[0], 2), (S[1], 1), (S[1], 2), (S[2], 1), (S[2], 2)]


def test_plan_one_repository_is_the_names_in_order_up_to_the_limit():
    assert plan(S[:5], {}, [1], healthy, set(), 3) == [(S[0], 1), (S[1], 1), (S[2], 1)]


def test_plan_skips_what_a_repository_holds_and_what_is_on_its_way():
    held = {1: {S[0]}, 2: {S[1]}}
    assert plan(S[:3], held, [1, 2], healthy, {(S[0], 2)}, 10) == [(S[1], 1), (S[2], 2), (S[2], 1)]


def test_plan_catching_up_repository_does_not_hold_back_the_other():
    """repo1 was down for S[0..8]; repo2 has them. repo2's newest goes out in the first pair."""
    held = {2: set(S[:9])}
    out = plan(S[:10], held, [1, 2], healthy, set(), 4)
    assert out == [(S[0], 1), (S[9], 2), (S[1], 1), (S[2], 1)]


def test_plan_gives_a_failed_repository_its_quota_only():
    quotas = {1: 1, 2: None}
    out = plan(S[:3], {}, [1, 2], quotas.__getitem__, set(), 10)
    assert out == [(S[0], 1), (S[0], 2), (S[1], 2), (S[2], 2)]
    quotas[1] = 0
    assert plan(S[:3], {}, [1, 2], quotas.__getitem__, set(), 10) == [(S[0], 2), (S[1], 2), (S[2], 2)]


def test_missing():
    assert missing(S[0], {1: {S[0]}}, [1, 2, 3]) == [2, 3]
    assert missing(S[0], {1: {S[0]}, 2: {S[0]}}, [1, 2]) == []


def test_health_failed_repository_waits_for_the_retry_pace_then_one_attempt_at_a_time():
    clock = Clock()
    health = RepoHealth([1, 2], retry=2.0, clock=clock)
    assert health.quota(1) is None and health.take(1)
    down = RepoInvalidError("repo1: unable to find a valid repository")
    health.fail(1, down, True)
    assert health.quota(1) == 0 and not health.take(1)
    assert health.quota(2) is None and not health.all_failed()
    clock.now += 1.9
    assert not health.take(1)  # not spinning: nothing before the pace
    clock.now += 0.2
    assert health.quota(1) == 1
    assert health.take(1)  # the attempt
    assert health.quota(1) == 0 and not health.take(1)  # one out at a time
    health.fail(1, down, True)  # still down: the pace starts again from this attempt
    clock.now += 1.0
    assert not health.take(1)
    clock.now += 1.0
    assert health.take(1)
    assert health.succeed(1)  # back
    assert health.quota(1) is None and not health.failed
    assert not health.succeed(1)


def test_health_all_failed_and_global_error_names_each_in_priority_order():
    health = RepoHealth([1, 2], retry=1.0, clock=Clock())
    assert health.global_error() is None
    health.fail(2, RepoInvalidError("repo2: unable to find a valid repository:\nrepo2: timeout"), True)
    assert health.global_error().message.startswith("repo2: ")  # type: ignore[union-attr]
    health.fail(1, ArchiveDuplicateError("repo1: WAL file 'x' already exists"), False)
    assert health.all_failed()
    err = health.global_error()
    assert err is not None and err.code == 103 and "repo1" not in err.message  # a file's failure: not global
    health.fail(1, RepoInvalidError("repo1: unable to find a valid repository:\nrepo1: refused"), True)
    err = health.global_error()
    assert err is not None and err.code == 103
    assert err.message == "repo1: unable to find a valid repository:\nrepo1: refused\n" \
                          "repo2: unable to find a valid repository:\nrepo2: timeout"


def test_one_repository_fails_the_run_at_its_first_failure():
    health = RepoHealth([1], retry=1.0, clock=Clock())
    health.fail(1, PgPushError("x", 45), False)
    assert health.all_failed()


def test_combined_keeps_the_first_class_and_code():
    one = RepoInvalidError("repo1: down")
    assert combined([one]) is one
    both = combined([ArchiveDuplicateError("repo1: a"), RepoInvalidError("repo2: b")])
    assert isinstance(both, ArchiveDuplicateError) and both.code == 45 and both.message == "repo1: a\nrepo2: b"


def test_dropped_list_repo1_where_it_always_was():
    assert dropped_list("/s/out", 1) == "/s/out/dropped.list"
    assert dropped_list("/s/out", 3) == "/s/out/repo3/dropped.list"


def markers_of(tmp_path, indexes=(1, 2), where=None) -> Markers:
    """Markers over ``tmp_path/out``, the WAL files (any content) in ``tmp_path/pg_wal``."""
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir(exist_ok=True)
    for name in S:
        if not (pg_wal / name).exists():
            (pg_wal / name).write_bytes(b"x" * 64)
    (tmp_path / "out").mkdir(exist_ok=True)
    where = where or {i: f"('posix', '/r{i}')" for i in indexes}
    return Markers(str(tmp_path / "out"), list(indexes), str(pg_wal), where)


def test_markers_are_in_their_own_directories_and_pruned(tmp_path):
    markers = markers_of(tmp_path)
    out = tmp_path / "out"
    markers.mark(S[0], 2)
    markers.mark(S[1], 2)
    markers.mark(S[1], 1)
    assert sorted(os.listdir(out)) == ["repo1", "repo2"]  # nothing the foreground reads
    (out / "repo2" / "dropped.list").write_text(f"{S[5]} 16MB\n")
    fresh = markers_of(tmp_path)
    assert fresh.load({S[0], S[1]}) == {1: {S[1]}, 2: {S[0], S[1]}}
    assert fresh.load({S[1]}) == {1: {S[1]}, 2: {S[1]}}  # S[0] no longer .ready: pruned
    assert sorted(os.listdir(out / "repo2")) == [S[1], "dropped.list"]
    fresh.clear(S[1])
    assert fresh.held == {1: set(), 2: set()}
    assert os.listdir(out / "repo1") == []
    assert markers_of(tmp_path).load({S[1]}) == {1: set(), 2: set()}


def test_a_marker_of_another_repository_or_another_file_is_no_copy(tmp_path):
    """Markers say which repository holds which file: the repositories swapped in the configuration,
    or a file of the same name that is another (a rebuilt cluster's), and the marker is removed."""
    markers = markers_of(tmp_path)
    for name in S[:4]:
        markers.mark(name, 1)
    markers.mark(S[0], 2)
    ready = set(S[:4])
    assert markers_of(tmp_path).load(ready) == {1: set(S[:4]), 2: {S[0]}}
    swapped = markers_of(tmp_path, where={1: "('posix', '/r2')", 2: "('posix', '/r1')"})
    assert swapped.load(ready) == {1: set(), 2: set()}
    assert os.listdir(tmp_path / "out" / "repo1") == []
    for name in S[:4]:
        markers.mark(name, 1)
    other = tmp_path / "pg_wal" / "other"
    other.write_bytes(b"y" * 64)
    os.replace(other, tmp_path / "pg_wal" / S[1])  # another file under S[1]'s name
    os.truncate(tmp_path / "pg_wal" / S[2], 32)  # S[2] changed
    os.unlink(tmp_path / "pg_wal" / S[3])  # S[3] gone (its .ready left)
    assert markers_of(tmp_path).load(ready)[1] == {S[0]}
    (tmp_path / "out" / "repo1" / S[1]).write_text("")  # as markers were before they said what they mark
    assert markers_of(tmp_path).load(ready)[1] == {S[0]}
    os.mkdir(tmp_path / "out" / "repo1" / S[2])  # not a file pgpush wrote
    assert markers_of(tmp_path).load(ready)[1] == {S[0]}
    assert sorted(os.listdir(tmp_path / "out" / "repo1")) == [S[0]]


def test_module_is_stdlib_only():
    import ast

    tree = ast.parse(open(push_state.__file__).read())
    imported = {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)}
    imported |= {str(n.module).split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "os", "time", "collections", "typing", "pgpush"}, imported


@pytest.mark.parametrize("name", ["repo1", "dropped.list", "x.pgpush.tmp"])
def test_markers_ignore_what_is_not_a_wal_name(tmp_path, name):
    markers = markers_of(tmp_path, (1,))
    (tmp_path / "out" / "repo1").mkdir()
    (tmp_path / "out" / "repo1" / name).write_text("")
    assert markers.load({name}) == {1: set()}


# -- the parent's bookkeeping, with a fake pool (no processes, no repository) ----------------------


class FakePool:
    """Answers each task at once from ``answer(task)``; records what it was given."""

    def __init__(self, answer):
        self.answer = answer
        self.given: list[dict] = []
        self.out: list[tuple[dict, dict]] = []
        self.size = 2

    @property
    def busy(self) -> int:
        return len(self.out)

    def has_idle(self) -> bool:
        return self.busy < self.size

    def submit(self, task: dict) -> None:
        self.given.append(task)
        self.out.append((task, self.answer(task)))

    def results(self, timeout=None):
        out, self.out = self.out, []
        return out

    def close(self) -> None:
        pass


def parent(tmp_path, answer, *extra: str):
    from pgpush import config
    from pgpush.archive.push_parent import PushParent

    pg_wal = tmp_path / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    argv = [f"--config={tmp_path / 'none.conf'}", "--stanza=main", f"--spool-path={tmp_path / 'spool'}",
            f"--repo1-path={tmp_path / 'r1'}", "--archive-timeout=4", *extra, "push-async", str(pg_wal)]
    (tmp_path / "none.conf").write_text("")
    p = PushParent(config.load(argv, environ={}), str(pg_wal))
    p.pool = FakePool(answer)  # type: ignore[assignment]
    return p, pg_wal


def ready(pg_wal, *names: str) -> None:
    for name in names:
        (pg_wal / name).write_bytes(b"x" * 1024)
        (pg_wal / "archive_status" / f"{name}.ready").write_text("")


DOWN = {"ok": False, "code": 103, "global": True, "message": "unable to find a valid repository:\nrepo1: refused"}


def test_parent_one_repository_stops_at_its_first_failure_as_ever(tmp_path):
    p, pg_wal = parent(tmp_path, lambda t: {**DOWN, "message": "unable to find a valid repository:\nrepo1: x"})
    p.pool.size = 1
    ready(pg_wal, S[0], S[1])
    assert not p.run_once()
    assert p.failed
    assert [t["op"] for t in p.pool.given] == ["push"]  # nothing more after the failure
    assert (tmp_path / "spool/archive/main/out/global.error").read_text() == \
        "103\nunable to find a valid repository:\nrepo1: x"
    assert not (tmp_path / "spool/archive/main/out/repo1").exists()


def test_parent_repo1_down_repo2_goes_on_then_repo1_catches_up_oldest_first(tmp_path):
    state = {"down": True}

    def answer(task):
        if task["op"] == "push" and task["repo"] == 1 and state["down"]:
            return DOWN
        return {"ok": True, "warning": None}

    p, pg_wal = parent(tmp_path, answer, "--repo2-path=/r2")
    out = tmp_path / "spool/archive/main/out"
    ready(pg_wal, S[0], S[1], S[2])
    assert p.run_once()
    assert not p.failed and 1 in p.health.failed
    pushes = [(os.path.basename(t["path"]), t["repo"]) for t in p.pool.given if t["op"] == "push"]
    assert pushes == [(S[0], 1), (S[0], 2), (S[1], 2), (S[2], 2)]  # repo1 once, repo2 everything
    assert sorted(os.listdir(out / "repo2")) == S[:3]
    assert not list(out.glob("*.ok"))  # in one repository only: nothing acknowledged
    assert (out / "global.error").read_text().startswith("103\nunable to find a valid repository:\nrepo1: ")
    p.pool.given.clear()
    assert not p.run_once()  # nothing for repo2, repo1 not due yet: no attempt (no spinning)
    assert p.pool.given == []
    state["down"] = False
    p.health.failed[1] = p.health.failed[1]._replace(since=p.health.failed[1].since - p.retry)
    assert p.run_once()
    while p.run_once():
        pass
    pushes = [(os.path.basename(t["path"]), t["repo"]) for t in p.pool.given if t["op"] == "push"]
    assert pushes == [(S[0], 1), (S[1], 1), (S[2], 1)]  # one attempt, then the rest, oldest first
    assert sorted(n for n in os.listdir(out) if n.endswith(".ok")) == [f"{s}.ok" for s in S[:3]]
    assert not (out / "global.error").exists() and os.listdir(out / "repo2") == []
    assert {t["repo"] for t in p.pool.given if t["op"] == "refresh"} == {1}


def test_parent_drop_recorded_only_where_the_file_is_missing(tmp_path):
    def answer(task):
        if task["repo"] == 1:
            return DOWN
        return {"ok": True, "warning": None}

    p, pg_wal = parent(tmp_path, answer, "--repo2-path=/r2", "--archive-push-queue-max=2KB")
    out = tmp_path / "spool/archive/main/out"
    ready(pg_wal, S[0])
    p.run_once()
    assert os.listdir(out / "repo2") == [S[0]]
    ready(pg_wal, S[1], S[2])
    p.pool.given.clear()
    p.run_once()
    assert (out / f"{S[0]}.ok").read_text().startswith("0\ndropped WAL file")
    assert (out / "dropped.list").read_text() == "".join(f"{s} 2KB\n" for s in S[:3])  # repo1 lacks all
    drops = [t for t in p.pool.given if t["op"] == "drop"]
    assert [(t["repo"], t["names"]) for t in drops] == [(2, S[1:3])]  # repo2 lacked only these
    assert not (out / "repo2" / "dropped.list").exists()  # recorded: repo2 answers
    assert os.listdir(out / "repo2") == []


def test_worker_routes_push_drop_and_refresh_to_the_task_s_repository(tmp_path, monkeypatch):
    """Each task goes to the repository it names (repo1 when none): a worker that pushed, dropped or
    refreshed in repo1 whatever the task said would leave repo2 without what the parent marks it as holding."""
    from pgpush import config
    from pgpush.archive import core, worker

    (tmp_path / "none.conf").write_text("")
    cfg = config.load([f"--config={tmp_path / 'none.conf'}", "--stanza=main", "--repo1-path=/r1", "--repo2-path=/r2",
                       "worker", "push"], environ={})
    w = worker.Worker(cfg)
    monkeypatch.setattr(w, "repository", lambda index=1: f"repo{index}")
    seen: list[tuple[str, object]] = []
    monkeypatch.setattr(core, "push_file", lambda repo, path: seen.append(("push", repo)))
    monkeypatch.setattr(core, "_refresh_backups", lambda repo, named=False: seen.append(("refresh", repo)))
    monkeypatch.setattr(worker.walarchive, "record_dropped", lambda repo, name, reason: seen.append(("drop", repo)))
    for task in ({"op": "push", "path": f"/pg_wal/{S[0]}", "repo": 2}, {"op": "drop", "names": [S[0]], "reason": "r",
                 "repo": 2}, {"op": "refresh", "repo": 2}, {"op": "push", "path": f"/pg_wal/{S[0]}"}):
        assert w.handle(task)["ok"], task
    assert seen == [("push", "repo2"), ("drop", "repo2"), ("refresh", "repo2"), ("push", "repo1")]
