"""A sandbox to run pgpush on arbitrary inputs and check the contract every answer must keep.

The contract (docs/operations.md, "Exit codes of these commands"): exit 0; or exit 1 from ``get`` only ("not in the archive"); or a code
from 2 to 125 announced by exactly one ``ERROR: [NNN]:`` line with that number; never a
traceback; and nothing written outside the repository, the spool, the log path and pg1-path
(HOME and the directory above them stay as they were).

Runs in-process through the guarded entry (fast: hundreds of examples a second for what does
not import the CLI) or as a subprocess (``python -m pgpush`` or the zipapp).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

from pgpush.__main__ import main
from pgpush.config import load
from pgpush.repo.repository import Repository

STANZA = "main"
SYSTEM_ID = 7000000000000000001
PG_VERSION = 15
ERROR_LINE = re.compile(r"^ERROR: \[(\d{3})\]: ", re.M)
ALLOWED = ("repo", "spool", "log", "pgdata", "home", "pgpush.conf", "sock")


class Sandbox:
    """Directories for one property test: a posix repository with the stanza created, a spool, a log
    path, a data directory (the cwd, as PostgreSQL gives it), an empty HOME and socket directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        for name in ("repo", "spool", "log", "pgdata", "home", "sock"):
            (self.root / name).mkdir(exist_ok=True)
        (self.root / "pgdata" / "pg_wal").mkdir(exist_ok=True)
        self.config = self.root / "pgpush.conf"
        self.config.write_text("")
        self.base_env = {
            "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.root / "home"),
            "PGPUSH_CONFIG": str(self.config), "PGPUSH_REPO1_PATH": str(self.root / "repo"),
            "PGPUSH_SPOOL_PATH": str(self.root / "spool"), "PGPUSH_LOG_PATH": str(self.root / "log"),
            "PGPUSH_PG1_PATH": str(self.root / "pgdata"), "PGPUSH_PG1_SOCKET_PATH": str(self.root / "sock"),
            "PGPUSH_STANZA": STANZA, "PGPUSH_LOG_LEVEL_CONSOLE": "warn", "PGPUSH_COMPRESS_TYPE": "none",
        }
        cfg = load(["info"], self.base_env)
        repo = Repository.from_config(cfg)
        try:
            repo.stanza_create(SYSTEM_ID, PG_VERSION)
        finally:
            repo.storage.close()

    @property
    def cwd(self) -> Path:
        return self.root / "pgdata"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**self.base_env, **(extra or {})}

    def run_inprocess(self, argv: list[str], extra_env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """``main(argv)`` with this sandbox's environment and cwd, stdout and stderr captured."""
        out, err = io.StringIO(), io.StringIO()
        saved_env, saved_cwd = dict(os.environ), os.getcwd()
        os.environ.clear()
        os.environ.update(self.env(extra_env))
        os.chdir(self.cwd)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(list(argv))
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
        return rc, out.getvalue(), err.getvalue()

    def run_subprocess(self, command: list[str], argv: list[str], extra_env: dict[str, str] | None = None,
                       timeout: float = 60) -> tuple[int, str, str]:
        env = self.env(extra_env)
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        proc = subprocess.run(command + list(argv), cwd=self.cwd, env=env, capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        return (proc.returncode, proc.stdout.decode("utf-8", "backslashreplace"),
                proc.stderr.decode("utf-8", "backslashreplace"))

    def check(self, result: tuple[int, str, str], argv: list[str], get_allowed: bool) -> None:
        """Assert the contract for one answer (see the module docstring)."""
        rc, _out, err = result
        where = f"argv={argv!r} rc={rc} stderr={err!r}"
        assert "Traceback" not in err, where
        codes = ERROR_LINE.findall(err)
        if rc == 0:
            assert codes == [], where
        elif rc == 1:
            assert get_allowed, "exit 1 from something else than get: " + where
            assert codes == [], where
        else:
            assert 2 <= rc <= 125, where
            assert codes == [f"{rc:03d}"], where
        assert sorted(p.name for p in self.root.iterdir()) == sorted(ALLOWED), where
        assert list((self.root / "home").iterdir()) == [], where
        assert list((self.root / "sock").iterdir()) == [], where


def subprocess_commands() -> list[tuple[str, list[str]]]:
    """How to run pgpush as a separate process: always ``python -m pgpush``, and the zipapp when
    ``TEST_PGPUSH_ZIPAPP`` names one."""
    commands = [("python", [sys.executable, "-m", "pgpush"])]
    zipapp = os.environ.get("TEST_PGPUSH_ZIPAPP")
    if zipapp:
        commands.append(("zipapp", [zipapp]))
    return commands
