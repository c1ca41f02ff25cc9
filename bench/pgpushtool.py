"""pgpush as a DBA runs it: the zipapp copy (/tmp/pgpush-bench/pgpush.pyz) by its own
shebang, as ``postgres``, with a config file (``--config``) holding the repository over SFTP
(or, given ``repo_options``, any other repository, e.g. S3)."""

from __future__ import annotations

import shlex
from pathlib import Path

import common
from common import BACKUP_USER, PG_USER, Result, SshServer, chown, make_dir, run_tool


class Pgpush:
    stanza = "main"

    def __init__(self, base: Path, name: str, sshd: SshServer | None, cluster=None, repo_name: str | None = None,
                 repo_options: dict | None = None, stanza: str | None = None, extra_options: dict | None = None,
                 **options):
        """The repository is ``sshd``'s SFTP directory, or ``repo_options`` (repo1-* options,
        e.g. S3) when given; either way ``repo1-path`` gets ``/REPO_NAME`` (default: ``name``)
        appended.  ``repo_dir`` is the local directory of an SFTP repository (None otherwise).
        ``extra_options`` go into [global] as they are (e.g. a second repository's ``repo2-*``)."""
        self.name = name
        if stanza:
            self.stanza = stanza
        self.dir = make_dir(base / f"pgpush-{name}", PG_USER, 0o755)
        self.conf = self.dir / "pgpush.conf"
        self.spool = make_dir(self.dir / "spool")
        self.log = make_dir(self.dir / "log")
        if repo_options is not None:
            repo = dict(repo_options)
            repo["repo1-path"] = f"{repo['repo1-path'].rstrip('/')}/{repo_name or name}"
            self.repo_dir = None
        else:
            repo = dict(sshd.pgpush_options())
            repo_dir = Path(repo["repo1-path"]) / (repo_name or name)
            make_dir(repo_dir, BACKUP_USER, 0o750)
            repo["repo1-path"] = str(repo_dir)
            self.repo_dir = repo_dir
        self.global_options = {**repo, **(extra_options or {}), "log-path": str(self.log), "spool-path": str(self.spool),
                               **{k.replace("_", "-"): str(v) for k, v in options.items()}}
        self.cluster = cluster
        self.write_config()

    def write_config(self, cluster=None) -> None:
        if cluster is not None:
            self.cluster = cluster
        lines = ["[global]", *(f"{k}={v}" for k, v in self.global_options.items()), ""]
        if self.cluster is not None:
            c = self.cluster
            lines += [f"[{self.stanza}]", f"pg1-path={c.datadir}", f"pg1-port={c.port}",
                      f"pg1-socket-path={c.socket_dir}", ""]
        self.conf.write_text("\n".join(lines))
        chown(self.conf, PG_USER, 0o640)

    def argv(self, command: str, *args: str, **opts) -> list[str]:
        flags = common.cli_flags(self.conf, self.stanza, opts)
        return [str(common.PGPUSH_PYZ), *flags, command, *args]

    def command_line(self, command: str, *args: str, **opts) -> str:
        return " ".join(shlex.quote(a) for a in self.argv(command, *args, **opts)).replace("'%p'", '"%p"')

    def run(self, command: str, *args: str, cwd: str | Path = "/", timeout: float = 300, **opts) -> Result:
        return run_tool(self.argv(command, *args, **opts), PG_USER, cwd=cwd, timeout=timeout)

    def stanza_create(self) -> None:
        self.run("stanza-create", timeout=120).check(f"pgpush stanza-create ({self.name})")

    def log_tail(self, n: int = 30) -> str:
        out = []
        for path in sorted(self.log.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()
            out.append(f"--- {path.name}\n" + "\n".join(lines[-n:]))
        return "\n".join(out)
