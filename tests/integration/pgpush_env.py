"""A pgpush set-up for one test: options for a repo, spool and log dirs in the
test's work dir (owned by postgres, which runs archive_command), and helpers
to run pgpush as PostgreSQL does."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
from pathlib import Path

from harness import procs


class Pgpush:
    def __init__(self, cmd: list[str], work_dir: Path, stanza: str = "main", repo: dict | None = None, **options):
        self.cmd = list(cmd)
        self.work_dir = Path(work_dir)
        self.stanza = stanza
        self.log_path = self.work_dir / "log"
        self.spool_path = self.work_dir / "spool"
        for path in (self.log_path, self.spool_path):
            path.mkdir(exist_ok=True)
            procs.chown_tree(path, "postgres")
        if repo is None:
            repo_dir = self.work_dir / "repo"
            repo_dir.mkdir(exist_ok=True)
            procs.chown_tree(repo_dir, "postgres")
            repo = {"repo1-type": "posix", "repo1-path": str(repo_dir)}
        self.options = {"stanza": stanza, "log-path": str(self.log_path), "spool-path": str(self.spool_path),
                        "log-level-file": "detail", **repo}
        self.options.update({k.replace("_", "-"): str(v) for k, v in options.items()})

    def argv(self, *args: str, **overrides) -> list[str]:
        opts = dict(self.options)
        opts.update({k.replace("_", "-"): str(v) for k, v in overrides.items()})
        flags = []
        for key, value in opts.items():
            if value is None:
                continue
            if value in ("y", "n") and key in ("archive-async",):
                flags.append(f"--{key}" if value == "y" else f"--no-{key}")
            else:
                flags.append(f"--{key}={value}")
        return self.cmd + flags + list(args)

    def archive_command(self, **overrides) -> str:
        return " ".join(shlex.quote(a) for a in self.argv("push", "%p", **overrides))

    def restore_command(self, **overrides) -> str:
        return " ".join(shlex.quote(a) for a in self.argv("get", "%f", "%p", **overrides)).replace("'%p'", '"%p"')

    def run(self, *args: str, user: str = "postgres", cwd: str | Path = "/", timeout: float = 120,
            check: bool = False, **overrides) -> subprocess.CompletedProcess:
        argv = self.argv(*args, **overrides)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGPUSH_")}
        if user != "root":
            argv = ["runuser", "-u", user, "--"] + argv
        res = subprocess.run(argv, cwd=str(cwd), capture_output=True, text=True, timeout=timeout, env=env)
        if check and res.returncode != 0:
            raise AssertionError(f"pgpush {' '.join(args)} exited {res.returncode}: {res.stderr}{res.stdout}")
        return res

    def stanza_create(self, cluster) -> None:
        self.run("stanza-create", f"--pg1-path={cluster.datadir}", check=True)

    def log_text(self, group: str) -> str:
        path = self.log_path / f"{self.stanza}-{group}.log"
        return path.read_text() if path.exists() else ""

    @property
    def out_dir(self) -> Path:
        return self.spool_path / "archive" / self.stanza / "out"

    @property
    def in_dir(self) -> Path:
        return self.spool_path / "archive" / self.stanza / "in"


def sha1_file(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def archived_files(repo_dir: Path, stanza: str = "main") -> dict[str, str]:
    """``{segment: sha1 from the file name}`` of everything archived in a posix/sftp repo dir."""
    out = {}
    for path in (Path(repo_dir) / "archive" / stanza).glob("*/*/*"):
        name = path.name
        if "-" in name and not name.endswith(".dropped"):
            wal, sha = name.split("-", 1)
            out[wal] = sha.split(".", 1)[0]
    return out
