"""Command line, environment and config file, resolved into one :class:`Config`.

Precedence, highest first: ``--key=value`` on the command line, ``PGPUSH_KEY``
in the environment, then the config file sections ``[STANZA:COMMAND]``,
``[STANZA]``, ``[global:COMMAND]``, ``[global]``, then the option's default.

Stdlib only and no heavy imports: the hot path (one process per WAL segment)
parses its options through this module.  The INI reader is a small one of our
own because ``configparser`` costs more at import than the whole fast path.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Mapping

from pgpush.errors import CommandError, OptionInvalidError, OptionInvalidValueError, OptionRequiredError
from pgpush.options import ALIASES, BY_NAME, COMMANDS, REPO_MAX, Option, repo_option

# Not typing's: importing typing costs the hot path more than this module; type checkers know the name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal, overload

    # The option names by the type of their resolved value, for the type checker only (what ``cfg[...]``
    # returns); tests/unit/test_option_keys.py keeps them in step with pgpush/options.py.
    StrKey = Literal["config", "repo1-type", "repo1-path", "repo1-cipher-type", "repo1-host-known-hosts",
                     "repo1-s3-region", "repo1-s3-uri-style", "pg1-socket-path", "pg1-user", "pg1-database",
                     "spool-path", "compress-type", "log-level-console", "log-level-file", "log-path",
                     "target-action", "output"]
    OptionalStrKey = Literal["exec-id", "stanza", "repo1-cipher-pass", "repo1-host", "repo1-host-user",
                             "repo1-host-key-file", "repo1-s3-endpoint", "repo1-s3-bucket", "repo1-s3-key",
                             "repo1-s3-key-secret", "repo1-storage-ca-file", "pg1-path", "primary-conninfo", "type",
                             "set", "target", "tablespace-map", "tablespace-map-all"]
    IntKey = Literal["repo1-host-port", "repo1-storage-port", "pg1-port", "archive-get-queue-max", "process-max"]
    OptionalIntKey = Literal["repo1-retention-full", "archive-push-queue-max", "compress-level", "repo", "from", "to"]
    BoolKey = Literal["repo1-host-accept-new", "repo1-storage-verify-tls", "archive-async", "wait", "delta", "force"]
    FloatKey = Literal["repo1-host-timeout", "archive-timeout", "protocol-timeout"]
    OptionalFloatKey = Literal["wait-timeout"]

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1024, "kib": 1024,
    "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1024**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1024**4, "tib": 1024**4,
}
_STANZA_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
# Bounds of numeric values: a value past them is a typo or an attack, never a setting (an
# archive-timeout of 1e309 is infinite, a size of 9e400 bytes is not a number a computer holds).
MAX_SIZE = 4 * 1024**5  # 4PB, as pgBackRest's archive-push-queue-max
MAX_DURATION = 366 * 86400.0  # a year: longer than any wait pgpush should ever do
INT_RANGES = {"process-max": (1, 999), "repo1-host-port": (1, 65535), "pg1-port": (1, 65535),
              "repo1-storage-port": (1, 65535), "repo": (1, REPO_MAX), "from": (1, REPO_MAX), "to": (1, REPO_MAX)}
MAX_INT = 2**31 - 1
# Paths that must be absolute: PostgreSQL runs archive_command in the data directory, cron and the
# operator run backup elsewhere, so a relative path names different directories for each (a
# relative repo1-path would even put the archive inside the data directory a restore rewrites).
ABSOLUTE_PATHS = frozenset({"repo1-path", "spool-path", "log-path", "pg1-path", "pg1-socket-path"})
MAX_STANZA = 64
# Where a value came from (Config.sources): what a child must be told again is what came from these.
_ON_CLI = "on the command line"
_IN_ENV = "in environment variable "
# Environment variables of ours that are not options (the zipapp bootstrap's).
_ENV_NOT_OPTIONS = {"PGPUSH_CACHE", "PGPUSH_PYTHON", "PGPUSH_LOCK_FD"}


def parse_size(text: str) -> int:
    """``16MB`` -> 16777216.  Units are 1024-based as in pgBackRest."""
    text = str(text).strip()
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ").rstrip()
    unit = text[len(digits):].strip().lower()
    number, dot, decimals = digits.partition(".")
    if not _ascii_digits(number) or (dot and not _ascii_digits(decimals)) or unit not in _UNITS:
        raise ValueError("a size such as 16MB, 1GB or a number of bytes is expected")
    if len(number) > 20:
        raise ValueError(f"a size of at most {format_size(MAX_SIZE)} is expected")
    # Exact integer arithmetic: float() would turn a long number into inf (and int(inf) raises).
    decimals = decimals[:12]
    size = (int(number) * 10 ** len(decimals) + int(decimals or 0)) * _UNITS[unit] // 10 ** len(decimals)
    if size > MAX_SIZE:
        raise ValueError(f"a size of at most {format_size(MAX_SIZE)} is expected")
    return size


def _ascii_digits(text: str) -> bool:
    """``str.isdigit`` accepts other scripts' digits and superscripts: only 0-9 here."""
    return bool(text) and text.isascii() and text.isdigit()


def is_valid_stanza(name: str) -> bool:
    """``[A-Za-z0-9_.-]+``, at most 64 characters, not ``.`` or ``..`` (checked without ``re``,
    which is slow to import): the name is a path component in the repository and the spool."""
    return 0 < len(name) <= MAX_STANZA and _STANZA_CHARS.issuperset(name) and name.strip(".") != ""


def format_size(size: int) -> str:
    """Print a size as pgBackRest does: ``16MB``, ``1.5GB``, ``512B``."""
    for unit, factor in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= factor:
            text = f"{size / factor:.1f}"
            if text.endswith(".0"):
                text = text[:-2]
            return text + unit
    return f"{size}B"


def parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("y", "yes", "true", "on", "1"):
        return True
    if low in ("n", "no", "false", "off", "0"):
        return False
    raise ValueError("y or n is expected")


# Timeouts that cannot be 0 (pgBackRest's minimum, 0.1 s): with 0 every wait ends before it
# starts (a protocol-timeout of 0 leaves no worker the time to answer for a single file).
MIN_DURATION = {"archive-timeout": 0.1, "protocol-timeout": 0.1, "repo1-host-timeout": 0.1}


def parse_duration(text: str, low: float = 0.0) -> float:
    """Seconds, decimals allowed; nan, inf and absurd values are refused (every wait must end)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError("a number of seconds is expected") from None
    if not low <= value <= MAX_DURATION:  # also false for nan
        raise ValueError(f"a number of seconds from {low:g} to {MAX_DURATION:.0f} is expected")
    return value


def repo1_name(name: str) -> str:
    """``repo3-path`` -> ``repo1-path``: the rules of a repository option are written for repo1's name."""
    if name.startswith("repo") and name[4:5].isdigit() and name[5:6] == "-":
        return "repo1-" + name[6:]
    return name


def convert(opt: Option, raw: str) -> object:
    """Convert a raw string to the option's type; ValueError says what is expected."""
    name = repo1_name(opt.name)
    if opt.type == "str":
        if raw == "":
            raise ValueError("a non-empty value is expected")
        if name in ABSOLUTE_PATHS and not raw.startswith("/"):
            raise ValueError("an absolute path (beginning with /) is expected")
        return raw
    if opt.type == "int":
        low, high = INT_RANGES.get(name, (0, MAX_INT))
        text = raw.strip()
        if not _ascii_digits(text.removeprefix("-")) or len(text) > 12:
            raise ValueError(f"an integer from {low} to {high} is expected")
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"an integer from {low} to {high} is expected")
        return value
    if opt.type == "bool":
        return parse_bool(raw)
    if opt.type == "size":
        return parse_size(raw)
    if opt.type == "duration":
        return parse_duration(raw, MIN_DURATION.get(name, 0.0))
    if opt.type == "choice":
        if raw not in opt.choices:
            raise ValueError("one of " + ", ".join(opt.choices) + " is expected")
        return raw
    raise AssertionError(opt.type)


def read_ini(path: str) -> dict[str, dict[str, tuple[str, int]]]:
    """Read an INI file: ``{section: {key: (value, line)}}``.

    Keys outside a section, or lines that are not ``key=value``, are errors
    because a silently ignored line in a backup tool's config is a trap.
    """
    sections: dict[str, dict[str, tuple[str, int]]] = {}
    current: dict[str, tuple[str, int]] | None = None
    name = ""
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        text = line.strip()
        if not text or text[0] in "#;":
            continue
        if text[0] == "[":
            if not text.endswith("]"):
                raise OptionInvalidValueError(f"config file {path} line {lineno}: malformed section header {text!r}")
            name = text[1:-1].strip()
            current = sections.setdefault(name, {})
            continue
        key, sep, value = text.partition("=")
        if not sep or current is None:
            raise OptionInvalidValueError(f"config file {path} line {lineno}: expected 'key=value' inside a section, got {text!r}")
        key = key.strip()
        if key in current:
            raise OptionInvalidValueError(f"config file {path} line {lineno}: option '{key}' is set twice in section "
                                          f"[{name}] (first on line {current[key][1]})")
        current[key] = (value.strip(), lineno)
    return sections


def _read_text(path: str) -> str:
    """The config file's text: a regular file (a FIFO would block the open), UTF-8 throughout.

    Opened non-blocking and checked with fstat, so a FIFO or device put in its place is refused
    without waiting for a writer.  The whole file is decoded, comments included: a byte that is
    not UTF-8 is reported with its line rather than silently mangled.
    """
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise OptionInvalidValueError(f"unable to read config file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OptionInvalidValueError(f"config file {path} is not a regular file")
        if st.st_size > 1024 * 1024:
            raise OptionInvalidValueError(f"config file {path} is larger than 1MB")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise OptionInvalidValueError(f"unable to read config file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # the byte order mark some editors write
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        raise OptionInvalidValueError(f"config file {path} line {lineno}: not valid UTF-8 (byte 0x{data[exc.start]:02x})") from None


class Config:
    """Resolved options for one command, with where each value came from.

    Repository options are read by their ``repo1-*`` names everywhere: :meth:`repo` gives the
    view of repository N, in which ``repo1-*`` holds ``repoN-*``'s value, so storage and
    repository code has one spelling and :meth:`key` names the option the operator wrote.
    """

    repo_index = 1  # the repository this configuration's repo1-* options describe

    def __init__(self, command: str, args: list[str], values: dict[str, object], sources: dict[str, str]):
        self.command = command
        self.args = args
        self.values = values
        self.sources = sources

    def key(self, name: str) -> str:
        """The option name an operator set for ``name`` here (``repo1-path`` is ``repo2-path`` in repo2's view)."""
        return repo_option(name, self.repo_index)

    @property
    def repo_label(self) -> str:
        """``repo1``..``repo4``: how messages, logs, spool files and ``info`` name the repository."""
        return f"repo{self.repo_index}"

    def repo_indexes(self) -> list[int]:
        """Every configured repository, in priority order: repo1 always; repoN (N >= 2) when any
        ``repoN-*`` option is set (as pgBackRest decides which repositories exist)."""
        found, given = [1], self.root.sources
        for index in range(2, REPO_MAX + 1):
            prefix = f"repo{index}-"
            if any(name.startswith(prefix) for name in given):
                found.append(index)
        return found

    def repo(self, index: int) -> Config:
        """The configuration of repository ``index`` (its ``repoN-*`` values under the ``repo1-*`` names)."""
        if index == self.repo_index:
            return self
        return RepoConfig(self.root, index)

    def location(self) -> tuple:
        """Where this configuration's repository is: two configured repositories must differ here."""
        kind = self.values.get("repo1-type")
        path = str(self.values.get("repo1-path")).rstrip("/") or "/"
        if kind != "s3":  # a file system resolves '//', '.' and '..' (an S3 key does not): '/a//b' is '/a/b'
            path = "/" + posixpath.normpath(path).lstrip("/")
        if kind == "sftp":
            return (kind, self.values.get("repo1-host"), self.values.get("repo1-host-port"), path)
        if kind == "s3":
            return (kind, self.values.get("repo1-s3-endpoint"), self.values.get("repo1-s3-bucket"), path)
        return (kind, path)

    @property
    def root(self) -> Config:
        """The configuration as loaded (all repositories), which a child process must be told."""
        return self

    def repos(self) -> list[Config]:
        """The repositories this command works on: the one ``--repo`` names, else every configured
        one, in priority order.  ``--repo`` naming one with no option set is an error (32): a typo
        would otherwise act on nothing, or on a default path."""
        root = self.root
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

    if TYPE_CHECKING:
        @overload
        def __getitem__(self, key: StrKey) -> str: ...
        @overload
        def __getitem__(self, key: OptionalStrKey) -> str | None: ...
        @overload
        def __getitem__(self, key: IntKey) -> int: ...
        @overload
        def __getitem__(self, key: OptionalIntKey) -> int | None: ...
        @overload
        def __getitem__(self, key: BoolKey) -> bool: ...
        @overload
        def __getitem__(self, key: FloatKey) -> float: ...
        @overload
        def __getitem__(self, key: OptionalFloatKey) -> float | None: ...
        @overload
        def __getitem__(self, key: str) -> Any: ...  # a name computed at run time

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.values.get(key)
        return default if value is None else value

    if TYPE_CHECKING:
        @overload
        def require(self, key: StrKey | OptionalStrKey) -> str: ...
        @overload
        def require(self, key: IntKey | OptionalIntKey) -> int: ...
        @overload
        def require(self, key: FloatKey | OptionalFloatKey) -> float: ...
        @overload
        def require(self, key: str) -> Any: ...

    def require(self, key: str) -> Any:
        value = self.values.get(key)
        if value is None:
            raise OptionRequiredError(f"{self.command} command requires option: {key}")
        return value

    @property
    def stanza(self) -> str:
        return self.require("stanza")

    def given(self, select: Callable[[str], bool] | None = None, *, environment: bool = False) -> list[str]:
        """Names of the options set on the command line (with ``environment``: or by ``PGPUSH_*``), sorted,
        that ``select`` keeps: what a pgpush started for this one must be told again."""
        return sorted(name for name, source in self.sources.items()
                      if (source == _ON_CLI or environment and source.startswith(_IN_ENV)) and (select is None or select(name)))

    def to_argv(self, select: Callable[[str], bool] | None = None, *, environment: bool = False) -> list[str]:
        """The options of :meth:`given` as a command line: the one serialiser of options.

        The child of a parent reads the environment and config file itself: only the command line
        is lost across exec (``environment`` is for a command that runs elsewhere, such as the
        restored cluster's ``restore_command``).  ``--config`` comes first when it was given, whatever
        ``select`` says.  Secrets are never put on a command line (they would show in ``ps``, or be
        written into a data directory): they travel by environment (:meth:`secret_env`), and
        ``exec-id`` neither: each child is given its own.
        """
        out = []
        for name in self.given(select, environment=environment):
            if name not in ("config", "exec-id") and not BY_NAME[name].secret:
                out.append(self.option_arg(name))
        if "config" in self.given(environment=environment):
            out.insert(0, self.option_arg("config"))
        return out

    def option_arg(self, name: str) -> str:
        """``--name=value`` (``--name`` or ``--no-name`` for a flag) that gives option ``name`` its value here."""
        opt, value = BY_NAME[name], self.values[name]
        if opt.type == "bool":
            return f"--{name}" if value else f"--no-{name}"
        if opt.type == "duration" and isinstance(value, (int, float)):  # the shortest text that reads back as the same float: 30, 0.1, 2.5
            text = repr(float(value))
            return f"--{name}={text[:-2] if text.endswith('.0') else text}"
        return f"--{name}={value}"

    def secret_env(self) -> dict[str, str]:
        """Secrets given on the command line, as environment for a child."""
        env = {}
        for name, source in self.sources.items():
            if source == _ON_CLI and BY_NAME[name].secret:
                env["PGPUSH_" + name.upper().replace("-", "_")] = str(self.values[name])
        return env


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


def split_argv(argv: list[str]) -> tuple[str | None, list[str], dict[str, str], bool]:
    """Split argv into (command, positional args, raw cli options, help asked).

    Options may stand before or after the command.  ``--key=value``,
    ``--key value``, ``--flag`` and ``--no-flag`` are accepted.
    """
    command: str | None = None
    args: list[str] = []
    raw: dict[str, str] = {}
    want_help = False
    i = 0
    only_args = False
    while i < len(argv):
        tok = argv[i]
        i += 1
        if only_args or not tok.startswith("-") or tok == "-":
            if command is None:
                command = ALIASES.get(tok, tok)
            else:
                args.append(tok)
            continue
        if tok == "--":
            only_args = True
            continue
        if tok in ("-h", "--help"):
            want_help = True
            continue
        if not tok.startswith("--"):
            raise OptionInvalidError(f"invalid option '{tok}' on the command line")
        key, sep, value = tok[2:].partition("=")
        opt = BY_NAME.get(key)
        if opt is None and key.startswith("no-") and key[3:] in BY_NAME and BY_NAME[key[3:]].type == "bool" and not sep:
            if key[3:] in raw:
                raise OptionInvalidError(f"option '--{key[3:]}' cannot be set multiple times on the command line")
            raw[key[3:]] = "n"
            continue
        if opt is None:
            raise OptionInvalidError(f"invalid option '--{key}' on the command line")
        if key in raw:
            raise OptionInvalidError(f"option '--{key}' cannot be set multiple times on the command line")
        if sep:
            raw[key] = value
        elif opt.type == "bool":
            raw[key] = "y"
        elif i < len(argv):
            raw[key] = argv[i]
            i += 1
        else:
            raise OptionInvalidValueError(f"option '--{key}' requires a value on the command line")
    if command is not None and command not in COMMANDS:
        raise CommandError(f"invalid command '{command}'")
    return command, args, raw, want_help


def load(argv: list[str], environ: Mapping[str, str] | None = None) -> Config:
    """Parse argv and resolve every option with its precedence."""
    environ = os.environ if environ is None else environ
    command, args, raw_cli, want_help = split_argv(argv)
    if want_help or command is None:
        command = "help" if command is None else command
        if want_help:
            args = [command] + args if command != "help" else args
            command = "help"
    values: dict[str, object] = {}
    sources: dict[str, str] = {}

    def set_value(opt: Option, raw: str, where: str) -> None:
        try:
            values[opt.name] = convert(opt, raw)
        except ValueError as exc:
            shown = "<redacted>" if opt.secret else raw
            raise OptionInvalidValueError(f"option '{opt.name}' has invalid value '{shown}' {where}: {exc}") from None
        sources[opt.name] = where

    for key, raw in raw_cli.items():
        opt = BY_NAME[key]
        if opt.commands and command not in opt.commands and command != "help":
            raise OptionInvalidError(f"option '{key}' is not valid for command '{command}' (on the command line)")
        set_value(opt, raw, _ON_CLI)

    env_values: dict[str, tuple[Option, str, str]] = {}
    for name, raw in environ.items():
        if not name.startswith("PGPUSH_") or name in _ENV_NOT_OPTIONS:
            continue
        key = name[7:].lower().replace("_", "-")
        env_opt = BY_NAME.get(key)
        if env_opt is None:
            raise OptionInvalidValueError(f"invalid option '{key}' in environment variable {name}")
        env_values[key] = (env_opt, raw, _IN_ENV + name)

    for key, (opt, raw, where) in env_values.items():
        if key not in values and (not opt.commands or command in opt.commands):
            set_value(opt, raw, where)

    config_path = values.get("config")
    named = "config" in values
    if config_path is None:
        config_path = BY_NAME["config"].default
        values["config"] = config_path
    if os.path.lexists(str(config_path)):
        ini = read_ini(str(config_path))
    elif named:
        raise OptionInvalidValueError(f"config file {config_path} does not exist ({sources['config']})")
    else:
        ini = {}

    def section_values(section: str) -> dict[str, tuple[str, int]]:
        return ini.get(section, {})

    ini = _checked_sections(ini, str(config_path))

    if "stanza" not in values and "stanza" in section_values("global"):
        raw, lineno = section_values("global")["stanza"]
        set_value(BY_NAME["stanza"], raw, f"in section [global] of {config_path} line {lineno}")
    stanza = values.get("stanza")
    if stanza is not None and not is_valid_stanza(str(stanza)):
        raise OptionInvalidValueError(f"option 'stanza' has invalid value '{stanza}' {sources['stanza']}: "
                                       f"[A-Za-z0-9_.-]+, at most {MAX_STANZA} characters, not '.' or '..' is expected")

    group = section_command(command, args)
    order = [f"{stanza}:{group}", str(stanza)] if stanza else []
    order += [f"global:{group}", "global"]
    for section in order:
        for key, (raw, lineno) in section_values(section).items():
            opt = BY_NAME[key]
            if key in values or (opt.commands and command not in opt.commands):
                continue
            set_value(opt, raw, f"in section [{section}] of {config_path} line {lineno}")

    for opt in BY_NAME.values():
        if opt.name not in values:
            values[opt.name] = opt.default
    _check_compress_level(values, sources)
    return Config(command, args, values, sources)


def section_command(command: str, args: list[str]) -> str:
    """The command whose ``[...:COMMAND]`` sections apply: the background parents and their
    workers do the work of ``push`` or ``get``, so an option set for ``push`` (``process-max``,
    ``compress-type``...) reaches them too, as ``[global:archive-push]`` does in pgBackRest."""
    if command in ("push-async", "get-async"):
        return command.removesuffix("-async")
    if command == "worker" and args[:1] in (["push"], ["get"]):
        return args[0]
    return command


def _checked_sections(ini: dict[str, dict[str, tuple[str, int]]], path: str) -> dict[str, dict[str, tuple[str, int]]]:
    """Validate every section name and key once, whatever the command; returns the sections
    with command aliases resolved (``[global:archive-push]`` is ``[global:push]``).

    A section that no command reads (``[main:bogus]``, ``[]``) or ``stanza`` set where it cannot
    apply would be ignored without a word: a trap in a backup tool's config, so an error (32).
    """
    out: dict[str, dict[str, tuple[str, int]]] = {}
    for section, entries in ini.items():
        name = _section_name(section, path, entries)
        merged = out.setdefault(name, {})
        for key, (raw, lineno) in entries.items():
            opt = BY_NAME.get(key)
            if opt is None or not opt.config:
                raise OptionInvalidValueError(f"invalid option '{key}' in section [{section}] of {path} line {lineno}")
            if key == "stanza" and name != "global":
                raise OptionInvalidValueError(f"option 'stanza' may only be set in section [global], not in "
                                              f"[{section}] of {path} line {lineno}")
            if key in merged:
                raise OptionInvalidValueError(f"option '{key}' is set twice for section [{name}] of {path} "
                                              f"(lines {merged[key][1]} and {lineno})")
            merged[key] = (raw, lineno)
    return out


def _section_name(section: str, path: str, entries: dict[str, tuple[str, int]]) -> str:
    """``global``, ``STANZA``, ``global:COMMAND`` or ``STANZA:COMMAND``, the alias resolved."""
    head, colon, cmd = section.partition(":")
    cmd = ALIASES.get(cmd, cmd)
    if (head == "global" or is_valid_stanza(head)) and (not colon or cmd in COMMANDS and cmd != "help"):
        return f"{head}:{cmd}" if colon else head
    line = min((lineno for _raw, lineno in entries.values()), default=0)
    where = f" (its first option on line {line})" if line else ""
    raise OptionInvalidValueError(f"invalid section [{section}] in {path}{where}: [global], [global:COMMAND], "
                                  "[STANZA] or [STANZA:COMMAND] with a known command is expected")


# Levels each library accepts (zstd 0 and lz4 0 mean the library's default); ``none`` has no
# level to check, so a global level does not forbid one stanza from turning compression off.
COMPRESS_LEVELS = {"gz": (0, 9), "zst": (0, 22), "lz4": (0, 16)}


def _check_compress_level(values: dict, sources: dict) -> None:
    """A level the chosen compression cannot use is a bad option value (32), caught before
    any work starts, not a library error half-way through a push or a backup."""
    level = values.get("compress-level")
    kind = values.get("compress-type")
    if level is None or kind not in COMPRESS_LEVELS:
        return
    low, high = COMPRESS_LEVELS[kind]
    if not low <= level <= high:
        raise OptionInvalidValueError(
            f"option 'compress-level' has invalid value '{level}' {sources['compress-level']}: "
            f"{low}..{high} is expected for compress-type {kind}"
        )


def stanzas_in_config(cfg: Config) -> list[str]:
    """Stanza names that have a section of their own in the config file."""
    path = str(cfg.values.get("config"))
    if not os.path.lexists(path):
        return []
    names = []
    for section in read_ini(path):
        name = section.split(":", 1)[0]
        if name != "global" and name not in names:
            names.append(name)
    return names
