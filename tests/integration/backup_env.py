"""Helpers shared by the backup, restore and catalog integration tests."""

from __future__ import annotations

import json
import re
import time

from pgpush_env import Pgpush


def pg_opts(cluster) -> list[str]:
    """Options that point pgpush's pg1 at a harness cluster."""
    return [f"--pg1-path={cluster.datadir}", f"--pg1-port={cluster.port}", f"--pg1-socket-path={cluster.socket_dir}"]


def setup_archiving(pp: Pgpush, cluster) -> None:
    """stanza-create, then archive_command = pgpush push (sync), reloaded."""
    pp.stanza_create(cluster)
    cluster.set_conf({"archive_command": pp.archive_command()})
    cluster.reload()


def info_json(pp: Pgpush, **overrides) -> list[dict]:
    res = pp.run("info", "--output=json", **overrides)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def backups(pp: Pgpush) -> dict[str, dict]:
    """``{label: backup}`` of the stanza, from ``info --output json``."""
    return {b["label"]: b for b in info_json(pp)[0]["backups"]}


def label_of(res) -> str:
    """The label from ``backup``'s result line (``backup LABEL is STATUS...``, or the wait-timeout error)."""
    found = re.findall(r"backup (\S+) is ", res.stdout + res.stderr)
    assert found, f"no backup label in:\n{res.stdout}\n{res.stderr}"
    return found[-1]


def backup(pp: Pgpush, cluster, *args: str, expect: int = 0, timeout: float = 180) -> tuple[str, object]:
    res = pp.run("backup", *pg_opts(cluster), *args, timeout=timeout)
    assert res.returncode == expect, f"backup exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return (label_of(res) if expect in (0, 3) else ""), res


def wait_status(pp: Pgpush, label: str, status: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        b = backups(pp).get(label)
        if b is not None and b["status"] == status:
            return b
        if time.monotonic() > deadline:
            raise AssertionError(f"backup {label} not {status} after {timeout}s: {b}")
        time.sleep(0.3)
