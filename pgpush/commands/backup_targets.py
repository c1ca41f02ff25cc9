"""The repositories one ``backup`` writes to, each with its own copy's state.

``backup`` without ``--repo`` writes one backup (one ``pg_backup_start``/``stop``, one read
of the data directory) to every configured repository; ``--repo=N`` to that one only
(docs/architecture.md, "One backup, every repository").  Each repository's copy has its own
prior, label, files, record and status, and its own error: a repository that fails is given
up (:meth:`Target.fail`) and the backup goes on in the others.  Only when none is left does
the backup fail as a whole, with the first repository's error, as it does with one
repository.  With one repository nothing here changes a message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pgpush.config import Config
from pgpush.errors import PgPushError
from pgpush.log import LOG
from pgpush.repo.catalog import Catalog
from pgpush.repo.records import BackupRecord, ManifestFile
from pgpush.repo.repository import Repository


@dataclass
class Target:
    """One repository the backup goes to, and how far its copy got."""

    cfg: Config  # the repository's view (its repoN-* options under the repo1-* names)
    repo: Repository
    several: bool  # more than one repository: messages name this one
    cat: Catalog = field(init=False)
    error: PgPushError | None = None
    archive_id: str = ""
    btype: str = "full"
    prior: BackupRecord | None = None
    prior_index: dict[str, ManifestFile] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)  # labels in use in this repository
    label: str = ""
    started: bool = False  # its label directory exists (the in-progress marker was written)
    files: list[ManifestFile] = field(default_factory=list)
    record: BackupRecord | None = None
    committed: bool = False  # its manifest is written: the repository holds the backup

    def __post_init__(self) -> None:
        self.cat = Catalog(self.repo)

    @property
    def name(self) -> str:
        return self.repo.label

    @property
    def label_dir(self) -> str:
        return self.cat.label_dir(self.label)

    def say(self, message: str) -> str:
        """``message`` naming this repository when there are several."""
        return f"{self.name}: {message}" if self.several else message

    def fail(self, exc: PgPushError) -> None:
        """Give this repository's copy up with ``exc`` (named after the repository when there are several)."""
        self.error = exc.in_repo(self.name) if self.several else exc
        if self.several:
            LOG.warn(f"{self.name} is left out of this backup: {exc.message}")

    def abandon(self) -> None:
        """Remove the copy that will never be committed (a failed backup's rule: its files go now, or
        stay with their in-progress marker for ``expire`` when the repository cannot be reached)."""
        if not self.started or self.committed:
            return
        try:
            self.repo.storage.delete_tree(self.label_dir)
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            LOG.warn(self.say(f"unable to remove the incomplete backup '{self.label_dir}': {exc}"))


class Targets(list[Target]):
    """The repositories of one backup, in priority order."""

    def live(self) -> list[Target]:
        return [t for t in self if t.error is None]

    def each(self, fn: Callable[[Target], object]) -> None:
        """``fn(target)`` for every healthy repository; one that raises is given up; none left: raise."""
        for target in self.live():
            try:
                fn(target)
            except PgPushError as exc:
                target.fail(exc)
        self.check()

    def check(self) -> None:
        """Raise the first repository's error when every repository has failed."""
        if self and not self.live():
            error = self[0].error
            assert error is not None
            raise error

    def failed(self) -> list[Target]:
        return [t for t in self if t.error is not None]


def open_targets(cfg: Config) -> Targets:
    """Every repository this backup writes to: the one ``--repo`` names, else every configured one."""
    views = cfg.repos()
    return Targets(Target(view, Repository.from_config(view), len(views) > 1) for view in views)
