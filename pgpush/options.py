"""The option table: one source for the parser, the environment, the config
file, the CLI help and ``docs/configuration.md``.

Stdlib only: the hot path imports it.
"""

from __future__ import annotations

# Commands that may be given; the aliases map to their canonical name.
COMMANDS = (
    "push", "get", "stanza-create", "check", "backup", "restore",
    "info", "expire", "verify", "repo-sync", "version", "help",
    # internal: the background parents, started by the foreground push/get
    "push-async", "get-async", "worker",
)
ALIASES = {"archive-push": "push", "archive-get": "get"}

SECTION_HELP = {
    "general": "General",
    "repo": "Repository",
    "sftp": "Repository over SFTP",
    "s3": "Repository in S3-compatible object storage",
    "pg": "PostgreSQL",
    "archive": "Archiving",
    "perf": "Performance and compression",
    "log": "Logging",
    "command": "Command options",
}


class Option:
    """One option.  ``type`` is str, int, bool, size, duration, or choice.

    A plain class, not a dataclass: importing :mod:`dataclasses` costs more
    than the whole hot path (it pulls in inspect, ast and tokenize).
    """

    __slots__ = ("name", "type", "default", "help", "section", "choices", "commands", "secret", "config", "default_doc")

    def __init__(self, name: str, type: str, default: object, help: str, section: str, choices: tuple[str, ...] = (),
                 commands: tuple[str, ...] = (), secret: bool = False, config: bool = True,
                 default_doc: str | None = None):
        self.name = name
        self.type = type
        self.default = default
        self.help = help
        self.section = section
        self.choices = choices
        self.commands = commands  # empty: valid for every command
        self.secret = secret
        self.config = config  # may be set in the config file / environment
        self.default_doc = default_doc  # how the default is described in docs


OPTIONS: tuple[Option, ...] = (
    Option("config", "str", "/etc/pgpush/pgpush.conf", "config file (INI); a missing default file is not an error", "general", config=False),
    Option("exec-id", "str", None, "internal: the exec-id a worker shares with its parent (shown in ps)", "general", config=False),
    Option("stanza", "str", None, "name of the cluster's stanza ([A-Za-z0-9_.-]+)", "general"),
    Option("repo1-type", "choice", "posix", "repository storage", "repo", choices=("posix", "sftp", "s3")),
    Option("repo1-path", "str", "/var/lib/pgpush", "repository root, an absolute path (on the backup host for sftp, key prefix for s3)", "repo"),
    Option("repo1-retention-full", "int", None, "full backups to keep (expire)", "repo"),
    Option("repo1-cipher-type", "choice", "none", "repository encryption", "repo", choices=("none", "aes-256-gcm")),
    Option("repo1-cipher-pass", "str", None, "passphrase when encrypted; never logged", "repo", secret=True),
    Option("repo1-host", "str", None, "backup host (sftp)", "sftp"),
    Option("repo1-host-port", "int", 22, "SSH port", "sftp"),
    Option("repo1-host-user", "str", None, "SSH user on the backup host", "sftp", default_doc="current user"),
    Option("repo1-host-key-file", "str", None, "private key for the SSH login", "sftp", default_doc="~/.ssh/id_ed25519, id_ecdsa, id_rsa"),
    Option("repo1-host-known-hosts", "str", "~/.ssh/known_hosts", "host keys; an unknown or changed host key is refused", "sftp"),
    Option("repo1-host-accept-new", "bool", False, "add an unknown host key to known_hosts on first connect (trust on first use); a changed key is always refused", "sftp"),
    Option("repo1-host-timeout", "duration", 30.0, "connect and I/O timeout, seconds", "sftp"),
    Option("repo1-s3-endpoint", "str", None, "S3 endpoint: host, host:port (HTTPS) or http(s)://host:port", "s3"),
    Option("repo1-s3-bucket", "str", None, "bucket; repo1-path is the key prefix inside it", "s3"),
    Option("repo1-s3-region", "str", "us-east-1", "S3 region", "s3"),
    Option("repo1-s3-key", "str", None, "access key; never logged", "s3", secret=True),
    Option("repo1-s3-key-secret", "str", None, "secret key; never logged", "s3", secret=True),
    Option("repo1-s3-uri-style", "choice", "host", "bucket addressing", "s3", choices=("host", "path")),
    Option("repo1-storage-port", "int", 443, "storage port when the endpoint names none", "s3"),
    Option("repo1-storage-verify-tls", "bool", True, "n accepts an unverified TLS certificate (test servers only)", "s3"),
    Option("repo1-storage-ca-file", "str", None, "CA bundle for TLS", "s3"),
    Option("pg1-path", "str", None, "data directory (absolute path)", "pg"),
    Option("pg1-port", "int", 5432, "port", "pg"),
    Option("pg1-socket-path", "str", "/var/run/postgresql", "unix socket directory (absolute path)", "pg"),
    Option("pg1-user", "str", "postgres", "user for SQL", "pg"),
    Option("pg1-database", "str", "postgres", "database for SQL", "pg"),
    Option("primary-conninfo", "str", None, "libpq conninfo of the primary, used when pg1 is a standby to switch WAL there so a backup can finalize", "pg", secret=True),
    Option("archive-async", "bool", False, "asynchronous push and get", "archive"),
    Option("spool-path", "str", "/var/spool/pgpush", "spool directory for async push/get (absolute path)", "archive"),
    Option("archive-push-queue-max", "size", None, "drop WAL (loudly) once this much waits to be archived", "archive", default_doc="no limit"),
    Option("archive-get-queue-max", "size", 128 * 1024 * 1024, "bytes of WAL prefetched by async get", "archive"),
    Option("archive-timeout", "duration", 60.0, "how long a foreground push/get waits for the async parent", "archive"),
    Option("process-max", "int", 1, "workers in the pool (async push/get, backup, restore)", "perf"),
    Option("protocol-timeout", "duration", 1830.0, "longest wait for a worker's answer to one task (a WAL file, a backup file); past it the worker is killed and the run fails", "perf"),
    Option("compress-type", "choice", "zst", "compression of WAL and backup files", "perf", choices=("none", "gz", "zst", "lz4")),
    Option("compress-level", "int", None, "compression level: gz 0..9, zst 0..22, lz4 0..16 (checked when the command starts)", "perf", default_doc="type's default (gz 6, zst 3, lz4 1)"),
    Option("log-level-console", "choice", "warn", "console log level", "log", choices=("off", "error", "warn", "info", "detail", "debug")),
    Option("log-level-file", "choice", "info", "log file level", "log", choices=("off", "error", "warn", "info", "detail", "debug")),
    Option("log-path", "str", "/var/log/pgpush", "one file per stanza and command group (absolute path)", "log"),
    # command options
    Option("type", "str", None, "backup: full|diff|incr; restore: default|immediate|time|lsn|name|xid|standby", "command", commands=("backup", "restore")),
    Option("wait", "bool", False, "backup: do not return before the backup's WAL is archived (DONE)", "command", commands=("backup",)),
    Option("wait-timeout", "duration", None, "backup: give up waiting after this long (exit 3)", "command", commands=("backup",), default_doc="no limit"),
    Option("set", "str", None, "restore: backup label to restore (default: latest usable)", "command", commands=("restore",), config=False),
    Option("delta", "bool", False, "restore into an existing data directory, rewriting only changed files", "command", commands=("restore",)),
    Option("force", "bool", False, "restore: with --delta, also rewrite files whose size matches", "command", commands=("restore",)),
    Option("target", "str", None, "restore: recovery target (time, lsn, name or xid)", "command", commands=("restore",), config=False),
    Option("tablespace-map", "str", None, "restore: tablespaces elsewhere, OID=PATH[,OID=PATH...] (OIDs as in pg_tblspc)", "command", commands=("restore",), config=False),
    Option("tablespace-map-all", "str", None, "restore: every tablespace under this directory, in a subdirectory named by its OID", "command", commands=("restore",), config=False),
    Option("target-action", "choice", "pause", "restore: what recovery does at the target", "command", commands=("restore",), choices=("pause", "promote", "shutdown")),
    Option("output", "choice", "text", "info: output format", "command", commands=("info",), choices=("text", "json")),
    Option("repo", "int", None, "the one repository (1..4) a command works on", "command",
           commands=("get", "backup", "restore", "info", "expire", "verify", "check", "get-async", "worker"), config=False,
           default_doc="every configured repository"),
    Option("from", "int", None, "repo-sync: the repository (1..4) to copy from", "command", commands=("repo-sync",), config=False),
    Option("to", "int", None, "repo-sync: the repository (1..4) to copy to", "command", commands=("repo-sync",), config=False),
)

# Repositories 2..4 have every option of repository 1 (docs/operations.md, "Several repositories"):
# the table above names repo1's; the others are made from them here, so there is one place for each.
REPO_MAX = 4
REPO_SECTIONS = ("repo", "sftp", "s3")


def _repo_copies() -> tuple[Option, ...]:
    copies = []
    for index in range(2, REPO_MAX + 1):
        for o in OPTIONS:
            if o.name.startswith("repo1-"):
                copies.append(Option(f"repo{index}-" + o.name[6:], o.type, o.default, o.help, o.section, o.choices,
                                     o.commands, o.secret, o.config, o.default_doc))
    return tuple(copies)


DOCUMENTED = OPTIONS  # the table as help and docs/configuration.md show it: repo1's names stand for all four
OPTIONS = OPTIONS + _repo_copies()
BY_NAME = {o.name: o for o in OPTIONS}
REPO_NOTE = (f"Every repo1-* option exists for repo2 to repo{REPO_MAX} too (repo2-type, repo2-path, ...); a repository "
             "is configured when any of its options is set, repo1 always. See docs/operations.md, \"Several repositories\".")


def repo_option(name: str, index: int) -> str:
    """``repo1-path`` of repository ``index``: ``repo3-path``."""
    return f"repo{index}-" + name[6:] if name.startswith("repo1-") else name
