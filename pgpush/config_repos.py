"""Several repositories in the options (docs/operations.md, "Several repositories").

repo2..repo4 have every option of repo1 (pgpush/options.py makes them); the code reads a repository's
options by repo1's names through a view (:class:`RepoConfig`), so storage and repository code has one
spelling.  Here: which repositories exist, which ones a command works on, and the view.  Apart from
:mod:`pgpush.config` (whose :class:`~pgpush.config.Config` methods import this module when first asked)
because the hot path never needs it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

from pgpush.config import Config
from pgpush.errors import OptionInvalidValueError
from pgpush.options import BY_NAME, REPO_MAX, repo_option


def repo_indexes(cfg: Config) -> list[int]:
    """Every configured repository, in priority order: repo1 always; repoN (N >= 2) when any
    ``repoN-*`` option is set (as pgBackRest decides which repositories exist)."""
    found, given = [1], cfg.root.sources
    for index in range(2, REPO_MAX + 1):
        prefix = f"repo{index}-"
        if any(name.startswith(prefix) for name in given):
            found.append(index)
    return found


def location(cfg: Config) -> tuple:
    """Where this configuration's repository is: two configured repositories must differ here."""
    kind = cfg.values.get("repo1-type")
    path = str(cfg.values.get("repo1-path")).rstrip("/") or "/"
    if kind != "s3":  # a file system resolves '//', '.' and '..' (an S3 key does not): '/a//b' is '/a/b'
        path = "/" + posixpath.normpath(path).lstrip("/")
    if kind == "sftp":
        return (kind, cfg.values.get("repo1-host"), cfg.values.get("repo1-host-port"), path)
    if kind == "s3":
        return (kind, cfg.values.get("repo1-s3-endpoint"), cfg.values.get("repo1-s3-bucket"), path)
    return (kind, path)


def selected(cfg: Config) -> list[Config]:
    """The repositories this command works on: the one ``--repo`` names, else every configured
    one, in priority order.  ``--repo`` naming one with no option set is an error (32): a typo
    would otherwise act on nothing, or on a default path."""
    root = cfg.root
    chosen = root.values.get("repo")
    indexes = root.repo_indexes()
    if chosen is None:
        views = [root.repo(i) for i in indexes]
        seen: dict[tuple, str] = {}
        for view in views:  # two names for one store would be a copy that is not one
            where = view.location()
            if where in seen:
                raise OptionInvalidValueError(
                    f"{seen[where]} and {view.repo_label} are the same repository ({' '.join(map(str, where))}): "
                    f"set {view.key('repo1-path')} (or its host or bucket) to another place")
            seen[where] = view.repo_label
        return views
    if chosen not in indexes:
        raise OptionInvalidValueError(
            f"option 'repo' has invalid value '{chosen}' {root.sources.get('repo', '')}: repo{chosen} is not "
            f"configured (set repo{chosen}-path or another repo{chosen}-* option); configured: "
            + ", ".join(f"repo{i}" for i in indexes))
    return [root.repo(int(chosen))]


class RepoConfig(Config):
    """Repository ``index``'s view of a :class:`Config` (see :meth:`Config.repo`).

    Shares the root's tables for every other option; what a child is told (:meth:`to_argv`,
    :meth:`secret_env`) is always the root's, so a view never turns ``repo2-path`` into
    ``--repo1-path`` on a command line.
    """

    def __init__(self, root: Config, index: int):
        values = dict(root.values)
        sources = {k: v for k, v in root.sources.items() if not k.startswith("repo1-")}
        for name in BY_NAME:
            if name.startswith("repo1-"):
                theirs = repo_option(name, index)
                values[name] = root.values.get(theirs)
                if theirs in root.sources:
                    sources[name] = root.sources[theirs]
        super().__init__(root.command, root.args, values, sources)
        self._root = root
        self.repo_index = index

    @property
    def root(self) -> Config:
        return self._root

    def given(self, select: Callable[[str], bool] | None = None, *, environment: bool = False) -> list[str]:
        return self._root.given(select, environment=environment)

    def to_argv(self, select: Callable[[str], bool] | None = None, *, environment: bool = False) -> list[str]:
        return self._root.to_argv(select, environment=environment)

    def option_arg(self, name: str) -> str:
        return self._root.option_arg(name)

    def secret_env(self) -> dict[str, str]:
        return self._root.secret_env()
