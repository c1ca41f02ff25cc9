"""Set-ups shared by the asynchronous get tests: an archiving primary, and a recovery in two phases.

The two-phase recovery is how a stale answer shows: the first recovery stops at a target while the
parent has already prefetched (or failed on) a segment beyond it; the test then changes the
repository, and the second recovery must see the repository as it is now, not the old answer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import procs
from pgpush_env import Pgpush


def archived_primary(pg_factory, pp: Pgpush, n_segments: int, **conf):
    """A primary with 1 MB segments archiving synchronously; returns it and ``n_segments`` archived names."""
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": "", **conf}, wal_segsize_mb=1)
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command(archive_async="n")})
    pg.reload()
    names = pg.generate_wal(n_segments, payload_bytes=1024)
    pg.wait_archived(names[-1], timeout=60)
    return pg, names


@dataclass
class TwoMarks:
    """An archive holding ``marks`` rows 1 (at ``first_target``) and 2 (later), and a base backup before both."""

    base: Path
    first_target: str
    segment: str  # two segments past the first target: inside the prefetch window, beyond recovery's read-ahead
    stored: Path  # that segment's file in the repository


def two_marks(pg_factory, pp: Pgpush, work_dir: Path) -> TwoMarks:
    """Archive the two marks with a stopped primary left behind (see :class:`TwoMarks`)."""
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": "", "wal_keep_size": "1GB"},
                    wal_segsize_mb=1)
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command(archive_async="n")})
    pg.reload()
    base = work_dir / "base"
    pg.run([pg.bin("pg_basebackup"), "-D", str(base), "-X", "none", "-c", "fast", "-h", str(pg.socket_dir),
            "-p", str(pg.port), "-U", "postgres"], check=True)
    pg.sql("create table marks(id int)")
    pg.generate_wal(2, payload_bytes=1024)
    pg.sql("insert into marks values (1)")
    first_target = pg.sql("select pg_current_wal_insert_lsn()")
    switched = pg.generate_wal(4, payload_bytes=600 * 1024)
    # beyond what recovery reads ahead of its replay (wal_decode_buffer_size), inside the prefetch window
    segment = switched[2]
    pg.sql("insert into marks values (2)")
    pg.wait_archived(pg.switch_wal(), timeout=60)
    pg.stop()
    return TwoMarks(base, first_target, segment, next((work_dir / "repo").rglob(f"{segment}-*")))


def recover_in_two_phases(pg_factory, pp: Pgpush, src: TwoMarks, after_first: Callable[[], None],
                          between: Callable[[], None]):
    """Recover ``src.base`` through async get to the first mark (the server shuts down there), wait for
    ``after_first`` (the parent's answer about ``src.segment``), run ``between`` (change the repository),
    then recover to the end; both marks must be there.  Returns the promoted cluster."""
    restored = pg_factory("restored", init=False)
    restored._prepare_common()
    os.rename(src.base, restored.datadir)
    restored.set_conf({
        "port": restored.port, "unix_socket_directories": str(restored.socket_dir), "archive_mode": "off",
        "restore_command": pp.restore_command(archive_async="y"), "recovery_target_lsn": src.first_target,
        "recovery_target_action": "shutdown", "recovery_prefetch": "off",
    })
    (restored.datadir / "recovery.signal").touch()
    # recovery_target_action=shutdown: the server stops by itself at the target, so no "pg_ctl -w"
    restored.run([restored.bin("pg_ctl"), "-D", str(restored.datadir), "-l", str(restored.log_file), "-W", "start"],
                 check=True)
    procs.wait_for(lambda: "database system is shut down" in restored.log_tail(200) and not restored.is_running(),
                   120, message="recovery to stop at the first target")
    after_first()
    between()
    restored.set_conf({"recovery_target_lsn": "", "recovery_target_action": "promote"})
    restored.start(timeout=120)
    procs.wait_for(lambda: restored.sql("select pg_is_in_recovery()") == "f", 120, message="the end of recovery")
    assert restored.sql("select array_agg(id order by id) from marks") == "{1,2}", restored.log_tail()
    return restored
