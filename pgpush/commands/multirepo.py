"""What ``info``, ``expire`` and ``verify`` share when they work on several repositories.

Each of them runs once per repository (:meth:`pgpush.config.Config.repos`: every configured one in
priority order, or the one ``--repo`` names), and one repository that fails never stops the
others (docs/operations.md, "Several repositories").  Two rules keep the output of a
one-repository configuration exactly what it was: messages name their repository only when
several are configured, and a single failure is raised as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from pgpush.config import Config
from pgpush.errors import PgPushError


def named(cfg: Config) -> bool:
    """True when messages must say which repository they are about: several are configured
    (even when ``--repo`` picks one of them: the operator then still has two to tell apart)."""
    return len(cfg.root.repo_indexes()) > 1


def name(message: str, label: str) -> str:
    """``message`` said of repository ``label`` (``repo2: ...``), unless it names it already."""
    return PgPushError(message).in_repo(label).message


def one_line(message: str) -> str:
    """``message`` on one line, for a report that lists repositories (a storage error reads
    ``unable to find a valid repository:\nrepo2: ...``)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def combined(failures: Sequence[PgPushError]) -> PgPushError:
    """One error for the repositories that failed, each already named (:meth:`PgPushError.in_repo`).

    One failure is raised as it is (its class and code).  Several are one ``ERROR`` line with
    every message, and the code of the first in priority order: every failure is one line, and
    the exit code must be one number.
    """
    if len(failures) == 1:
        return failures[0]
    return PgPushError("; ".join(f.message for f in failures), failures[0].code)
