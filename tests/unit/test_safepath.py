"""Paths from a repository: clean names only, opened beneath their root without following a link,
and backup labels that cannot name a directory outside the stanza's backups."""

from __future__ import annotations

import os

import pytest

from pgpush import safepath
from pgpush.errors import FileReadError
from pgpush.repo.catalog import Catalog
from pgpush.repo.repository import Repository
from pgpush.storage.posix import PosixStorage


@pytest.mark.parametrize("name", ["", "/etc/x", "pg_data/../x", "pg_data//a", "pg_data/./a", "pg_data/a/",
                                  "a\0b", "..", "pg_data/" + "x" * 256, None, 5, ["pg_data"]])
def test_unclean_names_are_refused(name):
    with pytest.raises(safepath.UnsafePath):
        safepath.clean_parts(name)


def test_clean_names_split_into_their_parts():
    assert safepath.clean_parts("pg_data/base/1/1259") == ["pg_data", "base", "1", "1259"]
    assert safepath.clean_parts("pg_data/a..b/.hidden") == ["pg_data", "a..b", ".hidden"]


@pytest.mark.parametrize("path", ["relative", "/", "/a/../b", "/a//b", "/a\nb", None])
def test_unclean_tablespace_locations_are_refused(path):
    with pytest.raises(safepath.UnsafePath):
        safepath.clean_absolute(path)


def test_open_file_creates_beneath_its_root(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    fd = safepath.open_file(str(tmp_path), ["a", "b", "f"], os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"x")
    os.close(fd)
    assert (tmp_path / "a" / "b" / "f").read_bytes() == b"x"


def test_open_file_never_follows_a_link_on_the_way_or_at_the_end(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("keep")
    os.symlink(outside, root / "dir")
    os.symlink(outside / "victim", root / "file")
    with pytest.raises(safepath.UnsafePath, match="symbolic link"):
        safepath.open_file(str(root), ["dir", "victim"], os.O_WRONLY | os.O_TRUNC)
    with pytest.raises(safepath.UnsafePath, match="symbolic link"):
        safepath.open_file(str(root), ["file"], os.O_WRONLY | os.O_TRUNC)
    with pytest.raises(safepath.UnsafePath, match="symbolic link"):
        os.close(safepath.open_dir(str(root), ["dir"], create_mode=0o700))
    assert (outside / "victim").read_text() == "keep"
    with pytest.raises(safepath.UnsafePath, match="symbolic link"):
        safepath.lstat(str(root), ["dir", "victim"])
    assert safepath.lstat(str(root), ["missing", "x"]) is None


@pytest.mark.parametrize("label", ["../../x", "20240101-000000F/../..", "20240101-000000F\n", "", None])
def test_a_label_that_is_not_a_backup_label_names_no_directory(tmp_path, label):
    repo = Repository(PosixStorage(str(tmp_path)), "main", compress_type="none")
    cat = Catalog(repo)
    assert cat.label_dir("20240101-000000F_20240102-000000I").endswith("/main/20240101-000000F_20240102-000000I")
    with pytest.raises(FileReadError, match="not a backup label"):
        cat.label_dir(label)
