"""Whether the repositories of a stanza agree: what ``info`` says in its ``repos_status``.

Every repository is written by the same pushes and backups, so they should hold the same WAL
and the same backups; where they do not, a restore from one may reach less than a restore from
another, and the operator should know (a repository that was down and has not caught up, a
hole in one only, a backup that failed in one).  Pure: it compares what :mod:`info` read.

What is NOT a disagreement: each repository applies its own ``repoN-retention-full``, so one
may hold older WAL and older backups than another.  A repository is said to lack only what the
others hold *after its own oldest* segment (or backup); one that holds no WAL (or no backup)
lacks all the others hold.

Codes, following the meaning pgBackRest gives its stanza status codes: 0 ok; 4 the
repositories hold different WAL or backups; 5 they hold different databases (system id or
version); 99 a repository did not answer (it is named, the others are still compared).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pgpush import wal

OK, DIFFERENT, DB_MISMATCH, UNANSWERED = 0, 4, 5, 99
SHOWN_RANGES = 4  # WAL ranges named per repository; more are counted


@dataclass
class Copy:
    """What one repository that answered holds of a stanza."""

    label: str  # repo1..repo4
    system_id: object
    version: object
    archive_id: str
    segments: set[str]  # archived segments of archive_id (not dropped ones)
    segment_size: int | None
    backups: list[tuple[str, str, str]] = field(default_factory=list)  # (start_time, label, status), oldest first


def ranges(names: Sequence[str], segment_size: int | None) -> list[str]:
    """Sorted segment names as ``A`` / ``A to B`` runs of consecutive segments."""
    runs: list[list[str]] = []
    prev: tuple[int, int] | None = None
    for name in sorted(names):
        key = (wal.timeline_of(name), wal.segment_number(name, segment_size)) if segment_size else None
        if runs and key is not None and prev is not None and key == (prev[0], prev[1] + 1):
            runs[-1][1] = name
        else:
            runs.append([name, name])
        prev = key
    return [a if a == b else f"{a} to {b}" for a, b in runs]


def _shown(items: list[str]) -> str:
    more = len(items) - SHOWN_RANGES
    return ", ".join(items[:SHOWN_RANGES]) + (f" and {more} more" if more > 0 else "")


def _lacking_wal(copy: Copy, others: list[Copy]) -> str | None:
    same = [o for o in others if o.archive_id == copy.archive_id]
    floor = min(copy.segments) if copy.segments else ""
    lacks = sorted({s for o in same for s in o.segments} - copy.segments)
    lacks = [s for s in lacks if s > floor]
    if not lacks:
        return None
    holders = [o.label for o in same if o.segments.intersection(lacks)]
    size = copy.segment_size or next((o.segment_size for o in same if o.segment_size), None)
    return f"{copy.label} lacks WAL {_shown(ranges(lacks, size))} that {' and '.join(holders)} hold{'s' if len(holders) == 1 else ''}"


def _lacking_backups(copy: Copy, others: list[Copy]) -> str | None:
    mine = {label for _, label, _ in copy.backups}
    floor = copy.backups[0][:2] if copy.backups else ("", "")
    lacks = sorted({(start, label) for o in others for start, label, _ in o.backups
                    if label not in mine and (start, label) > floor})
    if not lacks:
        return None
    return f"{copy.label} lacks backup{'s' if len(lacks) > 1 else ''} {_shown([label for _, label in lacks])}"


def _status_differs(copies: list[Copy]) -> list[str]:
    seen: dict[str, list[tuple[str, str]]] = {}
    for c in copies:
        for _, label, status in c.backups:
            seen.setdefault(label, []).append((c.label, status))
    out = []
    for label in sorted(seen):
        if len({status for _, status in seen[label]}) > 1:
            out.append(f"backup {label} is " + ", ".join(f"{status} in {repo}" for repo, status in seen[label]))
    return out


def disagreements(copies: list[Copy]) -> tuple[int, list[str]]:
    """(code, what differs) between the repositories that answered, in priority order."""
    if len(copies) < 2:
        return OK, []
    first, found, code = copies[0], [], OK
    for c in copies[1:]:
        if (c.system_id, c.version) != (first.system_id, first.version):
            code = DB_MISMATCH
            found.append(f"{c.label} holds another database (system id {c.system_id}, version {c.version}) than "
                         f"{first.label} (system id {first.system_id}, version {first.version})")
    for c in copies:
        others = [o for o in copies if o is not c]
        found += [m for m in (_lacking_wal(c, others), _lacking_backups(c, others)) if m]
    found += _status_differs(copies)
    return (code or (DIFFERENT if found else OK)), found


def summary(errors: list[str], code: int, found: list[str]) -> dict:
    """The stanza's ``repos_status``: ``errors`` are the named messages of the repositories that
    did not answer, ``code`` and ``found`` what :func:`disagreements` says of the others."""
    parts = list(errors)
    if found:
        parts.append("repositories disagree: " + "; ".join(found))
    return {"code": UNANSWERED if errors else code, "message": "; ".join(parts) or "ok", "disagree": found}
