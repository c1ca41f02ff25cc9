"""Property tests over backup manifests: whatever a repository's manifest says, a restore exits 0 or
with one ``ERROR: [NNN]:`` line (never a traceback, never 1, never 25), and writes nothing outside
``pg1-path``.

Two layers: many examples through the manifest check in process (an accepted manifest only ever
names paths beneath ``pg1-path`` or a tablespace's ``PG_*`` directory), then a bounded number of
real ``pgpush restore`` runs against one backup taken once for the module.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TESTS_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS_DIR / "integration"))

from harness import procs  # noqa: E402
from harness.pg import PgCluster  # noqa: E402
from pgpush_env import Pgpush  # noqa: E402

from pgpush import safepath  # noqa: E402
from pgpush.commands.restore import layout  # noqa: E402
from pgpush.errors import FileReadError  # noqa: E402
from pgpush.repo import manifest_check  # noqa: E402

PGDATA = "/restore/target/data"
HOSTILE_NAMES = [
    "pg_data/../x", "pg_data/../../etc/passwd", "/etc/x", "pg_data//a", "pg_data/./a", "pg_data/a/..", "..",
    "pg_data", "pg_data/", "", "pg_data/a\0b", "pg_data/pg_tblspc/1/../../x", "pg_data/pg_tblspc/1/PG_15_1/../../..",
    "pg_data/" + "a" * 300, "pg_data/\udcff", "pg_data/base\\..\\x", "pg_data/pg_tblspc/1", "pg_data/pg_tblspc/1/x",
]
HOSTILE_DESTS = ["../x", "/", "relative", "/tmp/../etc", "/a//b", "/a\nb", PGDATA, PGDATA + "/base", "/restore", None, 5]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40), st.sampled_from(HOSTILE_NAMES),
    st.sampled_from(["0700", "0644", "4755", "0o777", "999", "-1", "15", "zst", ".zst", "", ".gz", "a" * 40]),
)
PLAUSIBLE = st.one_of(  # well-typed but wrong: the restore must still end with a code, never a traceback
    st.integers(0, 10 ** 7), st.from_regex(r"[0-9a-f]{40}", fullmatch=True), st.sampled_from(
        ["0600", "0755", "0000", "0700", ".gz", ".lz4", "", ".zst", "postgres", "root", "nobody-here"]),
    st.floats(-1e12, 1e12), st.sampled_from(["20240101-000000F", "20240101-000000F_20240102-000000I"]),
)
VALUES = PLAUSIBLE | st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=3), max_leaves=6)
FIELDS = ["name", "mode", "size", "sha1", "mtime", "ext", "reference", "repo_size", "user", "group", "destination",
          "pg_version", "label"]


def _base_manifest() -> dict:
    """A small valid manifest of the shape pgpush writes (a tablespace included)."""
    def d(name: str) -> dict:
        return {"name": name, "mode": "0700"}

    def f(name: str) -> dict:
        return {"name": name, "mode": "0600", "size": 3, "sha1": "a" * 40, "mtime": 1.5e9, "ext": ".zst",
                "repo_size": 12, "reference": None}

    return {"format": 1, "backup": {"label": "20240101-000000F", "pg_version": 15},
            "dirs": [d("pg_data"), d("pg_data/base"), d("pg_data/base/1"), d("pg_data/pg_tblspc"),
                     d("pg_data/pg_tblspc/16384/PG_15_202209061")],
            "links": [{"name": "pg_data/pg_tblspc/16384", "mode": "0700", "destination": "/srv/ts"}],
            "files": [f("pg_data/PG_VERSION"), f("pg_data/base/1/1259"), f("pg_data/pg_tblspc/16384/PG_15_202209061/x")]}


@st.composite
def mutated(draw, base: dict) -> dict:
    """``base`` with a few entries changed, added, removed or replaced by hostile values."""
    m = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(["files", "dirs", "links", "backup", "top"]))
        if section == "top":
            m[draw(st.sampled_from(["files", "dirs", "links", "backup"]))] = draw(VALUES)
            continue
        target = m.get(section)
        if section == "backup" and isinstance(target, dict):
            target[draw(st.sampled_from(["pg_version", "label"]))] = draw(VALUES)
            continue
        if not isinstance(target, list) or not target:
            continue
        entry = target[draw(st.integers(0, len(target) - 1))]
        action = draw(st.sampled_from(["set", "plausible", "name", "dest", "drop", "dup", "del"]))
        if not isinstance(entry, dict):
            continue
        if action == "set":
            entry[draw(st.sampled_from(FIELDS))] = draw(VALUES)
        elif action == "plausible":
            entry[draw(st.sampled_from(FIELDS[1:10]))] = draw(PLAUSIBLE)
        elif action == "name":
            entry["name"] = draw(st.sampled_from(HOSTILE_NAMES) | st.text(max_size=30).map(lambda t: "pg_data/" + t))
        elif action == "dest":
            entry["destination"] = draw(st.sampled_from(HOSTILE_DESTS))
        elif action == "drop":
            target.remove(entry)
        elif action == "dup":
            target.append(copy.deepcopy(entry))
        else:
            entry.pop(draw(st.sampled_from(FIELDS)), None)
    return m


def _beneath(path: str, root: str) -> bool:
    return os.path.normpath(path).startswith(root.rstrip("/") + "/")


@settings(max_examples=400, deadline=None, database=None)
@given(mutated(_base_manifest()))
def test_an_accepted_manifest_names_only_paths_beneath_its_roots(manifest):
    try:
        manifest_check.check(manifest, "20240101-000000F")
    except FileReadError as exc:
        assert exc.code == 42
        return
    links = {ln["name"]: ln["destination"] for ln in manifest.get("links", [])}
    try:
        layout.check_locations(PGDATA, links)
    except FileReadError:
        return
    for entry in manifest["files"] + manifest["dirs"]:
        root, parts = layout.locate(PGDATA, entry["name"], links)
        path = os.path.join(root, *parts)
        assert path == root == PGDATA or _beneath(path, root), entry
        if root != PGDATA:
            assert parts[0].startswith("PG_") and not _beneath(path, PGDATA), entry
        assert 0 <= int(entry["mode"], 8) <= 0o777
    for f in manifest["files"]:  # what a restore worker does with the numbers (FileJob)
        assert int(f["size"]) >= 0 and abs(float(f["mtime"])) < 2 ** 40


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(st.text(max_size=60), st.sampled_from(HOSTILE_NAMES)))
def test_a_clean_name_never_leaves_its_root(name):
    try:
        parts = safepath.clean_parts(name)
    except safepath.UnsafePath:
        return
    assert _beneath(os.path.join("/root", *parts), "/root")
    assert os.path.join(*parts) == name


# -- real restores ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_backup(pgpush_cmd):
    """One backup of a small cluster (1 MB WAL segments) for the whole module; the cluster is stopped after."""
    if os.geteuid() != 0:
        pytest.skip("needs root (runs PostgreSQL as postgres)")
    base = procs.make_tmp_dir(Path("/tmp/pgpush-tests") / os.environ.get("PYTEST_XDIST_WORKER", "main"),
                              f"manifest-props-{os.getpid()}", mode=0o755)
    pg = PgCluster(base, "pg")
    try:
        pg.init({"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
        pg.start()
        pp = Pgpush(pgpush_cmd, base)
        pp.stanza_create(pg)
        pg.set_conf({"archive_command": pp.archive_command()})
        pg.reload()
        res = pp.run("backup", f"--pg1-path={pg.datadir}", f"--pg1-port={pg.port}",
                     f"--pg1-socket-path={pg.socket_dir}", "--wait", "--wait-timeout=60", timeout=180)
        assert res.returncode == 0, res.stderr
        label = re.findall(r"backup (\S+) is ", res.stdout)[-1]
        pg.cleanup()
        path = base / "repo" / "backup" / pp.stanza / label / "backup.manifest"
        yield pp, base, path, json.loads(path.read_text())
    finally:
        pg.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def _snapshot(root: Path, *skip: str) -> dict:
    """Every entry below ``root`` but the ``skip`` subtrees (pg1-path; the repository and log pgpush write)."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            if not any(rel == s or rel.startswith(s + "/") for s in skip):
                st_ = os.lstat(path)  # a directory's size and time change with pg1-path made in it
                out[rel] = (st_.st_mode,) if os.path.isdir(path) else (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return out


_RUNS = [0]


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_restore_of_any_manifest_exits_with_one_error_line_and_writes_only_pg1_path(one_backup, data):
    pp, base, path, original = one_backup
    manifest = data.draw(mutated(original))
    procs.make_tmp_dir(base, "box")
    _RUNS[0] += 1
    target = f"box/data-{_RUNS[0]}"
    before = _snapshot(base, target, "repo", "log")
    path.write_text(json.dumps(manifest))
    try:
        res = pp.run("restore", f"--pg1-path={base / target}", "--process-max=1", timeout=120)
    finally:
        path.write_text(json.dumps(original))
    assert "Traceback" not in res.stderr + res.stdout
    assert _snapshot(base, target, "repo", "log") == before
    if res.returncode != 0:
        assert res.returncode not in (1, 25), res.stderr
        assert len(re.findall(r"^ERROR: \[\d{3}\]: ", res.stderr, re.M)) == 1, res.stderr
    shutil.rmtree(base / target, ignore_errors=True)
