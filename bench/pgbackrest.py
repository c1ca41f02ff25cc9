"""pgBackRest 2.45 in repo-host mode on this one machine, beside pgpush (see docs/benchmarks.md,
"How the tools are run").

Two OS users and SSH both ways over 127.0.0.1:

* ``postgres`` (the database host) runs ``archive-push``/``archive-get``/``restore``; they reach
  the repository host as ``pgpush-backup`` through the *same* sshd pgpush uses for SFTP (the
  harness ``SshServer``).
* ``pgpush-backup`` (the repository host) runs ``stanza-create`` and ``backup``; they reach
  PostgreSQL as ``postgres`` through a second, private sshd (:class:`DbHostSshd`) with
  ``UsePAM yes`` because the ``postgres`` account is locked.

pgBackRest has no option for an identity or known_hosts file, so ``cmd-ssh`` is a wrapper that
runs ``ssh -F <per-user config>``.  Each user gets its own lock, log and spool paths; nobody's
real ~/.ssh is touched.

:class:`PgBackRestS3` is pgBackRest with an S3 repository instead (the ``s3`` scenario): one
user, no SSH, every command on the database host.  :class:`PgBackRestSshS3` has both: repo1 on the
repository host as above, repo2 in S3 (the ``multirepo`` scenario).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from common import BACKUP_USER, PG_USER, Result, SshServer, chown, cli_flags, make_dir, run_tool

PGBACKREST = "/usr/bin/pgbackrest"


def version() -> str:
    try:
        return subprocess.run([PGBACKREST, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not installed"


class DbHostSshd(SshServer):
    """sshd through which the repository host logs in to the database host as ``postgres``."""

    def __init__(self, base_dir: Path):
        super().__init__(base_dir, user=PG_USER)

    def _prepare(self) -> None:  # not the harness's: never unlock or create the postgres account
        if self._prepared:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        for key in (self.host_key, self.key_file):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"bench-{key.name}", "-f", str(key)],
                               check=True, capture_output=True)
        os.chmod(self.host_key, 0o600)
        chown(self.key_file, BACKUP_USER, 0o600)
        chown(self.key_file.with_suffix(".pub"), BACKUP_USER, 0o644)
        self.authorized_keys_dir.mkdir(mode=0o755, exist_ok=True)
        auth = self.authorized_keys_dir / self.user
        auth.write_text(self.key_file.with_suffix(".pub").read_text())
        os.chmod(auth, 0o644)
        self._write_known_hosts()
        self._write_config()
        self._prepared = True

    def _write_known_hosts(self) -> None:
        keytype, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {keytype} {blob}\n")
        chown(self.known_hosts, BACKUP_USER, 0o644)

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config_file.read_text().replace("UsePAM no", "UsePAM yes")
        self.config_file.write_text(text)


class PgBackRest:
    """Configs, ssh wrappers and stanzas of pgBackRest for one benchmark run."""

    dir_name = "pgbackrest"  # under the run's work dir

    def __init__(self, base: Path, repo_sshd: SshServer, db_sshd: DbHostSshd):
        self.base = make_dir(base / self.dir_name, user="root", mode=0o755)
        self.repo_sshd, self.db_sshd = repo_sshd, db_sshd
        self.pg_home = make_dir(self.base / "pg-host", PG_USER, 0o755)
        self.repo_home = make_dir(self.base / "repo-host", BACKUP_USER, 0o755)
        self.repo_path = make_dir(self.repo_home / "repo", BACKUP_USER, 0o750)
        self.pg_conf = self.pg_home / "pgbackrest.conf"
        self.repo_conf = self.repo_home / "pgbackrest.conf"
        self.stanzas: dict[str, object] = {}  # name -> PgCluster
        for home, user in ((self.pg_home, PG_USER), (self.repo_home, BACKUP_USER)):
            for sub in ("lock", "log", "spool"):
                make_dir(home / sub, user, 0o750)
        self._ssh_wrapper(self.pg_home, PG_USER, repo_sshd.key_file, repo_sshd.known_hosts)
        self._ssh_wrapper(self.repo_home, BACKUP_USER, db_sshd.key_file, db_sshd.known_hosts)
        self._write_configs()

    @staticmethod
    def _ssh_wrapper(home: Path, user: str, key: Path, known_hosts: Path) -> None:
        config = home / "ssh_config"
        config.write_text(
            "Host *\n"
            f"  IdentityFile {key}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n"
        )
        chown(config, user, 0o600)
        wrapper = home / "ssh"
        wrapper.write_text(f"#!/bin/sh\nexec /usr/bin/ssh -F {shlex.quote(str(config))} \"$@\"\n")
        chown(wrapper, user, 0o755)

    def _write_configs(self) -> None:
        common = lambda home: [  # noqa: E731
            f"lock-path={home / 'lock'}", f"log-path={home / 'log'}", f"spool-path={home / 'spool'}",
            f"cmd-ssh={home / 'ssh'}", "log-level-console=warn",
        ]
        pg = ["[global]", *common(self.pg_home), f"repo1-host={self.repo_sshd.host}",
              f"repo1-host-port={self.repo_sshd.port}", f"repo1-host-user={BACKUP_USER}",
              f"repo1-host-config={self.repo_conf}", *self._more_global(), ""]
        repo = ["[global]", *common(self.repo_home), f"repo1-path={self.repo_path}", "repo1-retention-full=99",
                *self._more_global(), ""]
        for name, cluster in self.stanzas.items():
            pg += [f"[{name}]", f"pg1-path={cluster.datadir}", f"pg1-port={cluster.port}",
                   f"pg1-socket-path={cluster.socket_dir}", ""]
            repo += [f"[{name}]", f"pg1-host={self.db_sshd.host}", f"pg1-host-port={self.db_sshd.port}",
                     f"pg1-host-user={PG_USER}", f"pg1-host-config={self.pg_conf}", f"pg1-path={cluster.datadir}",
                     f"pg1-port={cluster.port}", f"pg1-socket-path={cluster.socket_dir}", ""]
        for path, text, user in ((self.pg_conf, pg, PG_USER), (self.repo_conf, repo, BACKUP_USER)):
            tmp = path.with_suffix(".tmp")
            tmp.write_text("\n".join(text))
            chown(tmp, user, 0o640)
            os.replace(tmp, path)

    def _more_global(self) -> list[str]:
        """[global] lines both hosts' configs get besides repo1's (a subclass's further repositories)."""
        return []

    # ------------------------------------------------------------------------------------------

    def add_stanza(self, name: str, cluster, create: bool = True) -> None:
        """Describe ``cluster`` (running, for stanza-create) as stanza ``name`` on both hosts."""
        self.stanzas[name] = cluster
        self._write_configs()
        if create:
            self.repo_cmd("stanza-create", name, timeout=120).check(f"pgbackrest stanza-create {name}")

    def pg_argv(self, command: str, stanza: str, *args: str, **opts) -> list[str]:
        """argv of a database-host command (run as postgres): options, then the command and its args."""
        flags = cli_flags(self.pg_conf, stanza, opts)
        return [PGBACKREST, *flags, command, *args]

    def command_line(self, command: str, stanza: str, *args: str, **opts) -> str:
        """For archive_command / restore_command (``%p`` double-quoted as the docs do)."""
        return " ".join(shlex.quote(a) for a in self.pg_argv(command, stanza, *args, **opts)).replace("'%p'", '"%p"')

    def pg_cmd(self, command: str, stanza: str, *args: str, cwd: str | Path = "/", timeout: float = 300,
               **opts) -> Result:
        return run_tool(self.pg_argv(command, stanza, *args, **opts), PG_USER, cwd=cwd, timeout=timeout)

    def repo_cmd(self, command: str, stanza: str, *args: str, timeout: float = 600, **opts) -> Result:
        flags = cli_flags(self.repo_conf, stanza, opts)
        return run_tool([PGBACKREST, *flags, command, *args], BACKUP_USER, cwd=self.repo_home, timeout=timeout)

    def spool_dir(self, name: str) -> Path:
        """A fresh spool directory for one run (pgBackRest writes archive/STANZA/{in,out} under it)."""
        return make_dir(self.pg_home / "spools" / name, PG_USER, 0o750)

    def pg_log_tail(self, stanza: str, n: int = 30) -> str:
        out = []
        for path in sorted((self.pg_home / "log").glob(f"{stanza}-*.log")):
            lines = path.read_text(errors="replace").splitlines()
            out.append(f"--- {path.name}\n" + "\n".join(lines[-n:]))
        return "\n".join(out)


class PgBackRestS3(PgBackRest):
    """pgBackRest with an S3 repository (``repo1-type=s3``): every command, ``stanza-create`` and
    ``backup`` included, runs on the database host as ``postgres``; no SSH at all.

    ``s3`` holds the store's settings: ``host``, ``port`` (HTTPS: pgBackRest 2.45's S3 driver
    speaks nothing else), ``bucket``, ``region``, ``key``, ``secret``, ``ca_file`` (verified:
    ``repo1-storage-ca-file``), and ``path`` (the key prefix, ``repo1-path``).
    """

    def __init__(self, base: Path, s3: dict):  # no super().__init__: no sshd, no repo host
        self.base = make_dir(base / "pgbackrest-s3", user="root", mode=0o755)
        self.s3 = dict(s3)
        self.pg_home = make_dir(self.base / "pg-host", PG_USER, 0o755)
        self.pg_conf = self.pg_home / "pgbackrest.conf"
        self.repo_conf = self.pg_conf
        self.repo_path = None  # keys in a bucket, not a directory
        self.stanzas: dict[str, object] = {}
        for sub in ("lock", "log", "spool"):
            make_dir(self.pg_home / sub, PG_USER, 0o750)
        self._write_configs()

    def _write_configs(self) -> None:
        s3, home = self.s3, self.pg_home
        pg = ["[global]", f"lock-path={home / 'lock'}", f"log-path={home / 'log'}", f"spool-path={home / 'spool'}",
              "log-level-console=warn", "repo1-type=s3", f"repo1-path={s3['path']}", f"repo1-s3-endpoint={s3['host']}",
              f"repo1-storage-port={s3['port']}", f"repo1-s3-bucket={s3['bucket']}", f"repo1-s3-region={s3['region']}",
              "repo1-s3-uri-style=path", f"repo1-s3-key={s3['key']}", f"repo1-s3-key-secret={s3['secret']}",
              f"repo1-storage-ca-file={s3['ca_file']}", "repo1-retention-full=99", ""]
        for name, cluster in self.stanzas.items():
            pg += [f"[{name}]", f"pg1-path={cluster.datadir}", f"pg1-port={cluster.port}",
                   f"pg1-socket-path={cluster.socket_dir}", ""]
        tmp = self.pg_conf.with_suffix(".tmp")
        tmp.write_text("\n".join(pg))
        chown(tmp, PG_USER, 0o640)
        os.replace(tmp, self.pg_conf)

    def repo_cmd(self, command: str, stanza: str, *args: str, timeout: float = 600, **opts) -> Result:
        """Commands the SSH set-up runs on the repository host (stanza-create, backup, info) run
        here on the database host, as postgres."""
        return self.pg_cmd(command, stanza, *args, cwd=self.pg_home, timeout=timeout, **opts)


class PgBackRestSshS3(PgBackRest):
    """pgBackRest with two repositories: repo1 in repo-host mode over SSH (as :class:`PgBackRest`:
    pgBackRest 2.45 has no SFTP repository type, 2.46 added it) and repo2 in S3 (``repo2-type=s3``,
    ``s3`` as for :class:`PgBackRestS3`, over HTTPS).  Both hosts' configs describe repo2: the
    database host pushes WAL to it directly, the repository host's ``stanza-create`` creates the
    stanza in both repositories."""

    dir_name = "pgbackrest-ssh-s3"

    def __init__(self, base: Path, repo_sshd: SshServer, db_sshd: DbHostSshd, s3: dict):
        self.s3 = dict(s3)
        super().__init__(base, repo_sshd, db_sshd)

    def _more_global(self) -> list[str]:
        s3 = self.s3
        return ["repo2-type=s3", f"repo2-path={s3['path']}", f"repo2-s3-endpoint={s3['host']}",
                f"repo2-storage-port={s3['port']}", f"repo2-s3-bucket={s3['bucket']}", f"repo2-s3-region={s3['region']}",
                "repo2-s3-uri-style=path", f"repo2-s3-key={s3['key']}", f"repo2-s3-key-secret={s3['secret']}",
                f"repo2-storage-ca-file={s3['ca_file']}", "repo2-retention-full=99"]
