"""A repository is not trusted by restore: a tampered manifest never makes it write outside pg1-path.

Whoever can write the repository (the backup host, the bucket) can write a
manifest.  A manifest naming ``pg_data/../x``, an absolute or unclean name, a
directory outside, or a tablespace link that is not ``pg_tblspc/OID`` is
refused (42) before anything is written; a ``--delta`` restore never writes
through a symbolic link found in the data directory.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from backup_env import backup, setup_archiving
from harness import procs
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration


def _snapshot(root) -> dict[str, tuple]:
    """Every entry below ``root`` (not following links): kind, size, mode, mtime and content of files."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            content = open(path, "rb").read() if os.path.isfile(path) and not os.path.islink(path) else None
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, content)
    return out


def _one_error(res, code: int) -> None:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    assert len(re.findall(r"^ERROR: \[\d{3}\]: ", res.stderr, re.M)) == 1, res.stderr


def _archived_backup(pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    setup_archiving(pp, pg)
    label, _ = backup(pp, pg, "--wait", "--wait-timeout=60")
    path = work_dir / "repo" / "backup" / pp.stanza / label / "backup.manifest"
    return pp, pg, label, path


def _box(work_dir):
    """A postgres-owned directory holding the restore target and a sentinel beside it."""
    box = procs.make_tmp_dir(work_dir, "box")
    (box / "sentinel").write_text("keep me\n")
    os.chmod(box / "sentinel", 0o644)
    procs.chown_tree(box, "postgres")
    return box


def _tampered(original: dict, sabotage) -> dict:
    manifest = json.loads(json.dumps(original))
    sabotage(manifest)
    return manifest


def _file(manifest: dict, name: str) -> dict:
    return next(f for f in manifest["files"] if f["name"] == name)


def _rename_file(old: str, new: str):
    def sabotage(m: dict) -> None:
        _file(m, old)["name"] = new
    return sabotage


def _add_dir(name: str, mode: str = "0777"):
    def sabotage(m: dict) -> None:
        m["dirs"].append({"name": name, "mode": mode})
    return sabotage


def _link(name: str, destination: str):
    def sabotage(m: dict) -> None:
        m.setdefault("links", []).append({"name": name, "destination": destination, "mode": "0700"})
    return sabotage


def test_restore_refuses_manifest_names_outside_pg1_path_before_writing(pg_factory, pgpush_cmd, work_dir):
    pp, pg, label, manifest_path = _archived_backup(pg_factory, pgpush_cmd, work_dir)
    original = json.loads(manifest_path.read_text())
    box = _box(work_dir)
    outside = str(box / "outside")
    hostile = {
        "file ../ truncating a sentinel": _rename_file("pg_data/PG_VERSION", "pg_data/../sentinel"),
        "file ../../": _rename_file("pg_data/PG_VERSION", "pg_data/../../x"),
        "absolute file": _rename_file("pg_data/PG_VERSION", f"{box}/abs"),
        "file a//b": _rename_file("pg_data/global/pg_control", "pg_data/global//pg_control"),
        "file ./": _rename_file("pg_data/PG_VERSION", "pg_data/./PG_VERSION"),
        "file NUL": _rename_file("pg_data/PG_VERSION", "pg_data/PG_\0VERSION"),
        "file in an unlisted dir": _rename_file("pg_data/PG_VERSION", "pg_data/nowhere/PG_VERSION"),
        "directory ..": _add_dir("pg_data/../made-by-restore"),
        "directory with empty part": _add_dir("pg_data//base2"),
        "link outside pg_tblspc": _link("pg_data/base", outside),
        "relative link destination": _link("pg_data/pg_tblspc/16999", "../outside"),
        "link destination with ..": _link("pg_data/pg_tblspc/16999", f"{box}/data/../outside"),
        "link into pg1-path": _link("pg_data/pg_tblspc/16999", f"{box}/data/global"),
        "link holding pg1-path": _link("pg_data/pg_tblspc/16999", str(box)),
        "tablespace file outside PG_*": lambda m: (_link("pg_data/pg_tblspc/16999", outside)(m),
                                                   _rename_file("pg_data/PG_VERSION", "pg_data/pg_tblspc/16999/x")(m)),
        "setuid mode": lambda m: _file(m, "pg_data/PG_VERSION").update(mode="4755"),
        "size not a number": lambda m: _file(m, "pg_data/PG_VERSION").update(size="3"),
        "pg_version not a number": lambda m: m["backup"].update(pg_version="15; rm"),
        "reference not a label": lambda m: _file(m, "pg_data/PG_VERSION").update(reference="../../.."),
    }
    before = _snapshot(box)
    target = box / "data"
    for why, sabotage in hostile.items():
        manifest_path.write_text(json.dumps(_tampered(original, sabotage)))
        res = pp.run("restore", f"--pg1-path={target}")
        written = {k: v for k, v in _snapshot(box).items() if k != "data" and not k.startswith("data/")}
        assert written == before, why  # nothing outside pg1-path ...
        assert not target.exists(), why  # ... and not even pg1-path is created: refused before anything is written
        _one_error(res, 42)
        assert "corrupt" in res.stderr or "overlaps" in res.stderr, (why, res.stderr)
    manifest_path.write_text("[" * 100_000)  # JSON nested deeper than Python's recursion limit
    res = pp.run("restore", f"--pg1-path={target}")
    _one_error(res, 42)
    assert not target.exists()

    # verify reports such a manifest as a problem and reads nothing it names.
    manifest_path.write_text(json.dumps(_tampered(original, hostile["file ../../"])))
    res = pp.run("verify")
    assert res.returncode == 42 and "Traceback" not in res.stderr, res.stderr + res.stdout
    assert f"backup {label}: manifest of backup '{label}' is corrupt: file name 'pg_data/../../x'" in res.stdout

    manifest_path.write_text(json.dumps(original))
    res = pp.run("restore", f"--pg1-path={target}")
    assert res.returncode == 0, res.stderr
    assert {k: v for k, v in _snapshot(box).items() if k != "data" and not k.startswith("data/")} == before


def test_delta_restore_never_writes_through_a_link_in_the_data_directory(pg_factory, pgpush_cmd, work_dir):
    pp, pg, label, _manifest = _archived_backup(pg_factory, pgpush_cmd, work_dir)
    box = _box(work_dir)
    data = box / "data"
    res = pp.run("restore", f"--pg1-path={data}")
    assert res.returncode == 0, res.stderr
    victims = box / "victims"
    victims.mkdir()
    (victims / "PG_VERSION").write_text("victim file\n")
    (victims / "pg_control").write_text("victim control\n")
    procs.chown_tree(victims, "postgres")
    # Links planted where the backup has a file and a directory: the restore replaces them, never follows them.
    (data / "PG_VERSION").unlink()
    os.symlink(victims / "PG_VERSION", data / "PG_VERSION")
    os.rename(data / "global", box / "global.moved")
    os.symlink(victims, data / "global")
    before = _snapshot(victims)
    res = pp.run("restore", f"--pg1-path={data}", "--delta")
    assert res.returncode == 0, res.stderr
    assert _snapshot(victims) == before
    assert not (data / "PG_VERSION").is_symlink() and not (data / "global").is_symlink()
    assert (data / "PG_VERSION").read_text() == (pg.datadir / "PG_VERSION").read_text()
    assert (data / "global" / "pg_control").stat().st_size == 8192


def test_restore_keeps_bytes_of_postgresql_auto_conf_that_are_not_utf8(pg_factory, pgpush_cmd, work_dir):
    """The restored postgresql.auto.conf gets the recovery settings; its other bytes stay as they were."""
    pp = Pgpush(pgpush_cmd, work_dir)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    setup_archiving(pp, pg)
    auto_conf = pg.datadir / "postgresql.auto.conf"
    auto_conf.write_bytes(auto_conf.read_bytes() + b"# caf\xe9 (latin-1)\n")
    backup(pp, pg, "--wait", "--wait-timeout=60")
    data = _box(work_dir) / "data"
    res = pp.run("restore", f"--pg1-path={data}")
    assert res.returncode == 0, res.stderr
    restored = (data / "postgresql.auto.conf").read_bytes()
    assert b"# caf\xe9 (latin-1)\n" in restored and b"restore_command = " in restored
