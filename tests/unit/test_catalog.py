"""Status, gap, recoverability and retention math (pure), and the catalog over a posix repository."""

from __future__ import annotations

import pytest

from pgpush import wal
from pgpush.commands import expire
from pgpush.commands.backup import choose_prior, make_label
from pgpush.commands.restore import choose, recovery
from pgpush.errors import BackupSetInvalidError, OptionInvalidValueError
from pgpush.pg.pgdata import unlogged_skips
from pgpush.repo import catalog, status
from pgpush.repo.catalog import Catalog
from pgpush.repo.repository import Repository
from pgpush.repo.status import DONE, FAILED, WAITING, ArchiveState, SegmentIndex, evaluate, gaps
from pgpush.storage.base import FileInfo
from pgpush.storage.posix import PosixStorage

MB16 = 16 * 1024 * 1024


def seg(n: int, tli: int = 1) -> str:
    return wal.segment_name(tli, n, MB16)


def rec(label: str, start: int, stop: int, tli: int = 1, status: str = WAITING, btype: str = "full",
        start_time: str = "2024-01-01T00:00:00+00:00", stop_time: str = "2024-01-01T00:01:00+00:00", **kw) -> dict:
    out = {"label": label, "type": btype, "status": status, "wal_start": seg(start, tli), "wal_stop": seg(stop, tli),
           "segment_size": MB16, "archive_id": "15-1", "start_time": start_time, "stop_time": stop_time,
           "prior": None, "reference": [], "system_id": 1}
    out.update(kw)
    return out


def index(archived, dropped=()) -> SegmentIndex:
    return SegmentIndex([seg(*a) if isinstance(a, tuple) else seg(a) for a in archived],
                        [seg(*d) if isinstance(d, tuple) else seg(d) for d in dropped], MB16)


# -- status -----------------------------------------------------------------------------------------


def test_done_when_every_segment_is_archived():
    assert evaluate(rec("a", 3, 5), index([1, 2, 3, 4, 5])).status == DONE


def test_waiting_when_the_stop_segment_is_not_archived_yet():
    ev = evaluate(rec("a", 3, 5), index([3, 4]))
    assert ev.status == WAITING and ev.missing == [seg(5)]


def test_failed_when_a_later_segment_is_archived():
    ev = evaluate(rec("a", 3, 5), index([3, 5, 6]))
    assert ev.status == FAILED and ev.missing == [seg(4)] and ev.dropped == []


def test_failed_at_once_when_a_segment_was_dropped():
    ev = evaluate(rec("a", 3, 5), index([3, 4], dropped=[5]))
    assert ev.status == FAILED and ev.dropped == [seg(5)]
    assert "dropped" in ev.detail()


def test_a_hole_after_the_range_does_not_fail_the_backup():
    assert evaluate(rec("a", 3, 4), index([3, 4, 6])).status == DONE


def test_segment_on_a_later_timeline_counts():
    # after a promotion timeline 2 carries a copy of the switch segment
    assert evaluate(rec("a", 3, 4), index([3, (4, 2)])).status == DONE
    # an earlier timeline does not
    assert evaluate(rec("a", 3, 4, tli=2), index([(3, 2), (4, 1)])).status == WAITING


def test_ranges_across_a_log_boundary():
    per = wal.segments_per_log(MB16)  # 256: ...000000FF is followed by ...0100000000
    r = rec("a", per - 1, per)
    assert r["wal_start"].endswith("00000000000000FF") and r["wal_stop"].endswith("0000000100000000")
    assert evaluate(r, index([per - 1])).status == WAITING
    assert evaluate(r, index([per - 1, per])).status == DONE


def test_stop_lsn_on_a_segment_boundary_needs_nothing_of_that_segment():
    assert wal.stop_segment(1, "0/5000000", MB16) == seg(4)
    assert wal.stop_segment(1, "0/5000001", MB16) == seg(5)


# -- gaps -------------------------------------------------------------------------------------------


def test_gaps_between_archived_segments_per_timeline():
    names = [seg(n) for n in (1, 2, 5, 6, 9)] + [seg(n, 2) for n in (6, 8)]
    assert gaps(names, [], MB16) == [[seg(3), seg(4)], [seg(7), seg(8)], [seg(7, 2), seg(7, 2)]]


def test_dropped_segments_are_gaps_even_at_the_end():
    assert gaps([seg(1), seg(2)], [seg(3), seg(4)], MB16) == [[seg(3), seg(4)]]
    assert gaps([seg(1), seg(5)], [seg(3)], MB16) == [[seg(2), seg(4)]]
    # a dropped marker next to an archived copy of the same segment is no gap
    assert gaps([seg(1), seg(2)], [seg(2)], MB16) == []


def test_no_gaps_in_a_contiguous_archive():
    assert gaps([seg(n) for n in range(250, 262)], [], MB16) == []


# -- recoverable_to ---------------------------------------------------------------------------------


def state(archived: dict[int, float | None], dropped=()) -> ArchiveState:
    files = {seg(n): FileInfo(f"{seg(n)}-{'0' * 40}.zst", 10, mtime) for n, mtime in archived.items()}
    return ArchiveState("15-1", MB16, files, {seg(n) for n in dropped})


def test_recoverable_to_stops_at_the_first_gap():
    t0 = status.parse_iso("2024-01-01T00:01:00+00:00")
    b = rec("a", 3, 4, status=DONE)
    st = state({3: t0, 4: t0, 5: t0 + 60, 6: t0 + 120, 8: t0 + 300})
    assert status.recoverable_to(b, st, [b]) == status.iso_utc(t0 + 120)


def test_recoverable_to_is_the_stop_time_when_nothing_follows():
    b = rec("a", 3, 4, status=DONE)
    assert status.recoverable_to(b, state({3: 1.0, 4: 2.0, 6: 3.0}), [b]) == b["stop_time"]


def test_recoverable_to_is_null_unless_done():
    b = rec("a", 3, 4, status=WAITING)
    assert status.recoverable_to(b, state({3: 1.0}), [b]) is None


def test_recoverable_to_without_storage_times_uses_later_backups():
    a = rec("a", 3, 4, status=DONE)
    b = rec("b", 6, 6, status=DONE, start_time="2024-01-01T01:00:00+00:00", stop_time="2024-01-01T01:00:05+00:00")
    st = state({n: None for n in range(3, 9)})
    assert status.recoverable_to(a, st, [a, b]) == "2024-01-01T01:00:05+00:00"


def test_iso_utc_rounds_the_stop_time_up():
    assert status.iso_utc(1.2) == "1970-01-01T00:00:01+00:00"
    assert status.iso_utc(1.2, ceil=True) == "1970-01-01T00:00:02+00:00"
    assert status.iso_utc(1.0, ceil=True) == "1970-01-01T00:00:01+00:00"


# -- retention ---------------------------------------------------------------------------------------


def chain() -> list[dict]:
    def t(day: int) -> dict:
        return {"start_time": f"2024-01-0{day}T00:00:00+00:00", "stop_time": f"2024-01-0{day}T00:10:00+00:00"}

    return [
        rec("F1", 1, 1, status=DONE, **t(1)),
        rec("F1_I1", 2, 2, status=DONE, btype="incr", prior="F1", reference=["F1"], **t(2)),
        rec("F2", 3, 3, status=DONE, **t(3)),
        rec("F2_D1", 4, 4, status=DONE, btype="diff", prior="F2", reference=["F2"], **t(4)),
        rec("F3", 5, 5, status=FAILED, **t(5)),
        rec("F4", 6, 6, status=DONE, **t(6)),
    ]


def labels(backups: list[dict]) -> list[str]:
    return [b["label"] for b in backups]


def test_retention_keeps_newest_fulls_and_their_dependents():
    kept, removed = expire.plan(chain(), 2)
    assert labels(kept) == ["F2", "F2_D1", "F3", "F4"]  # F3 is FAILED: it does not count as a full
    assert labels(removed) == ["F1", "F1_I1"]


def test_retention_keeps_everything_when_few_fulls():
    kept, removed = expire.plan(chain(), 3)
    assert removed == [] and len(kept) == 6


def test_retention_keeps_what_a_kept_backup_references():
    backups = chain()
    backups[-1] = rec("F1_I9", 6, 6, status=DONE, btype="incr", prior="F2_D1", reference=["F1", "F2"],
                      start_time="2024-01-06T00:00:00+00:00")
    kept, _ = expire.plan(backups, 1)
    assert set(labels(kept)) == {"F1", "F2", "F2_D1", "F3", "F1_I9"}


def test_retention_keeps_the_chain_of_a_running_backup():
    f1, f2, f3 = "20240101-000000F", "20240102-000000F", "20240103-000000F"
    backups = [rec(f1, 1, 1, status=DONE, start_time="2024-01-01T00:00:00+00:00"),
               rec(f1 + "_20240101-010000I", 2, 2, status=DONE, btype="incr", prior=f1, reference=[f1],
                   start_time="2024-01-01T01:00:00+00:00"),
               rec(f2, 3, 3, status=DONE, start_time="2024-01-02T00:00:00+00:00"),
               rec(f3, 4, 4, status=DONE, start_time="2024-01-03T00:00:00+00:00")]
    _, removed = expire.plan(backups, 1)
    assert labels(removed) == [f1, f1 + "_20240101-010000I", f2]
    # an incr of f1 is being taken: it may reference anything of f1's chain
    _, removed = expire.plan(backups, 1, running=[f1 + "_20240104-000000I"])
    assert labels(removed) == [f2]
    _, removed = expire.plan(backups, 1, running=["20240104-000000F"])
    assert labels(removed) == [f1, f1 + "_20240101-010000I", f2]


def test_label_time_reads_the_last_timestamp():
    import time

    assert expire.label_time("20240101-000000F_20240102-030405I") == time.mktime((2024, 1, 2, 3, 4, 5, 0, 0, -1))


def test_retention_must_be_positive():
    with pytest.raises(OptionInvalidValueError):
        expire.plan(chain(), 0)


def test_wal_boundary_is_the_oldest_kept_start():
    kept, _ = expire.plan(chain(), 2)
    assert expire.wal_boundary(kept, "15-1") == (seg(3), MB16)
    assert expire.wal_boundary(kept, "16-2") is None


# -- labels, prior, restore choice -------------------------------------------------------------------


def test_labels_look_like_pgbackrest():
    import re

    full = make_label("full", None, 0)
    assert re.fullmatch(r"\d{8}-\d{6}F", full)
    assert re.fullmatch(re.escape(full) + r"_\d{8}-\d{6}D", make_label("diff", full, 60))
    assert re.fullmatch(re.escape(full) + r"_\d{8}-\d{6}I", make_label("incr", full, 60))
    assert catalog.LABEL_RE.match(make_label("incr", full, 60))


def test_prior_diff_is_last_full_incr_is_last_backup():
    backups = chain()
    assert choose_prior(backups, "diff", "15-1", 1)["label"] == "F4"
    assert choose_prior(backups[:4], "diff", "15-1", 1)["label"] == "F2"
    assert choose_prior(backups[:4], "incr", "15-1", 1)["label"] == "F2_D1"
    assert choose_prior(backups, "incr", "16-2", 1) is None


def test_restore_chooses_latest_done_or_before_target_time():
    backups = chain()
    assert choose.choose_backup(backups, None, "default", None)[0]["label"] == "F4"
    b, why = choose.choose_backup(backups, None, "time", "2024-01-04 12:00:00+00")
    assert b["label"] == "F2_D1" and "before the target" in why
    assert choose.choose_backup(backups, "F1", "default", None)[0]["label"] == "F1"
    with pytest.raises(BackupSetInvalidError):
        choose.choose_backup(backups, "nope", "default", None)
    with pytest.raises(BackupSetInvalidError):
        choose.choose_backup([rec("F", 1, 1, status=FAILED)], None, "default", None)


# -- recovery settings --------------------------------------------------------------------------------


def test_auto_conf_rewrite_replaces_our_block_and_disables_others():
    old = ("# Do not edit this file manually!\nwork_mem = '8MB'\nrestore_command = 'cp /x/%f %p'\n"
           f"{recovery.BEGIN}\n# then\nrecovery_target_time = 'x'\n{recovery.END}\n")
    new = recovery.rewrite_auto_conf(old, [("restore_command", "pgpush get %f \"%p\""), ("recovery_target_name", "it's")])
    assert "work_mem = '8MB'" in new
    assert "# disabled by pgpush restore: restore_command = 'cp /x/%f %p'" in new
    assert "recovery_target_time" not in new
    assert new.count(recovery.BEGIN) == 1
    assert "restore_command = 'pgpush get %f \"%p\"'" in new
    assert "recovery_target_name = 'it''s'" in new
    assert recovery.rewrite_auto_conf(new, []).count(recovery.BEGIN) == 1


def test_recovery_settings_per_type():
    from pgpush import config

    cfg = config.load(["--stanza=main", "--repo1-path=/r e/po", "--repo1-cipher-pass=secret", "--pg1-port=5433", "restore"],
                      environ={"PGPUSH_ARCHIVE_TIMEOUT": "30"})
    Cfg = lambda: cfg  # noqa: E731
    cmd = recovery.restore_command(Cfg())
    assert cmd.endswith(' get %f "%p"')
    assert "'--repo1-path=/r e/po'" in cmd and "--archive-timeout=30" in cmd and "--stanza=main" in cmd
    assert "secret" not in cmd and "pg1-port" not in cmd
    keys = lambda t, target=None: [k for k, _ in recovery.settings(Cfg(), t, target, "promote")]  # noqa: E731
    assert keys("default") == ["restore_command"]
    assert keys("standby") == ["restore_command"]
    assert keys("immediate") == ["restore_command", "recovery_target", "recovery_target_action"]
    assert keys("time", "2024-01-01") == ["restore_command", "recovery_target_time", "recovery_target_action"]
    assert keys("xid", "42")[1] == "recovery_target_xid"


# -- data directory -------------------------------------------------------------------------------------


def test_unlogged_relations_keep_only_their_init_fork():
    names = ["16384", "16384_init", "16384_fsm", "16384.1", "16385", "16385_vm", "PG_VERSION"]
    assert unlogged_skips(names) == {"16384", "16384_fsm", "16384.1"}
    assert unlogged_skips(["1", "2"]) == set()


# -- catalog over a repository ---------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path) -> Repository:
    r = Repository(PosixStorage(str(tmp_path)), "main", compress_type="none")
    r.stanza_create(7, 15)
    return r


def put_segments(repo: Repository, numbers) -> None:
    for n in numbers:
        name = seg(n)
        repo.storage.put(f"archive/main/15-1/{name[:16]}/{name}-{'0' * 40}", [b"x"])


def test_refresh_status_flips_waiting_to_done_and_failed(repo):
    cat = Catalog(repo)
    cat.add(rec("20240101-000000F", 3, 4))
    cat.add(rec("20240101-000100F", 6, 6, start_time="2024-01-01T00:02:00+00:00"))
    assert catalog.refresh_status(repo) == []  # nothing archived yet: still waiting
    put_segments(repo, [3, 4, 5])
    changed = catalog.refresh_status(repo)
    assert [(c["label"], c["status"]) for c in changed] == [("20240101-000000F", DONE)]
    put_segments(repo, [7])
    changed = catalog.refresh_status(repo)
    assert [(c["label"], c["status"]) for c in changed] == [("20240101-000100F", FAILED)]
    assert {b["label"]: b["status"] for b in cat.read()} == {"20240101-000000F": DONE, "20240101-000100F": FAILED}


def test_refresh_status_reads_backup_info_only_when_nothing_waits(repo):
    cat = Catalog(repo)
    cat.add(rec("20240101-000000F", 3, 4, status=DONE))
    calls = []
    storage = repo.storage
    original = storage.list_dirs
    storage.list_dirs = lambda d: calls.append(d) or original(d)
    assert catalog.refresh_status(repo) == []
    assert calls == []


def test_reconcile_readds_a_manifest_and_drops_a_vanished_backup(repo):
    cat = Catalog(repo)
    kept = rec("20240101-000000F", 3, 4)
    lost = rec("20240102-000000F", 5, 5, start_time="2024-01-02T00:00:00+00:00")
    cat.write_manifest(kept["label"], {"backup": kept, "files": [], "dirs": [], "links": []})
    cat.write_manifest(lost["label"], {"backup": lost, "files": [], "dirs": [], "links": []})
    cat.add(lost)
    cat.add(rec("20240103-000000F", 6, 6, start_time="2024-01-03T00:00:00+00:00"))  # no directory: stale entry
    assert [b["label"] for b in cat.reconciled()] == ["20240101-000000F", "20240102-000000F"]
    assert [b["label"] for b in cat.read()] == ["20240101-000000F", "20240102-000000F"]


def test_info_lists_the_stanzas_of_the_config_each_with_its_own_options(tmp_path):
    import json

    from pgpush import config
    from pgpush.commands import info

    (tmp_path / "a").mkdir()
    Repository(PosixStorage(str(tmp_path / "a")), "main", compress_type="none").stanza_create(7, 15)
    conf = tmp_path / "pgpush.conf"
    conf.write_text(f"[global]\nrepo1-path={tmp_path / 'a'}\nlog-level-file=off\n"
                    f"[main]\npg1-path=/x\n[other]\nrepo1-path={tmp_path / 'b'}\n")
    cfg = config.load([f"--config={conf}", "--output=json", "info"], environ={})
    assert info.stanza_names(cfg) == ["main", "other"]
    assert info.for_stanza(cfg, "other")["repo1-path"] == str(tmp_path / "b")
    out = json.loads(info.run(cfg))
    assert [(s["name"], s["status"]) for s in out] == [("main", "ok"), ("other", "error")]
    assert out[0]["archive"] == {"min": None, "max": None, "gaps": [], "dropped": [], "conflicts": [], "archive_id": "15-1",
                                 "repo": 1}
    assert out[0]["backups"] == []
    assert "stanza-create" in out[1]["message"]
    # One repository: its own entry in "repos", the archive once more in "archives", and nothing to disagree.
    assert out[0]["archives"] == [{**out[0]["archive"]}]
    assert out[0]["repos"] == [{"repo": 1, "status": "ok", "code": 0, "message": "ok", "cipher": "none"}]
    assert out[0]["repos_status"] == {"code": 0, "message": "ok", "disagree": []}
    assert out[1]["repos"][0]["status"] == "missing-stanza" and out[1]["repos_status"]["code"] == 99
