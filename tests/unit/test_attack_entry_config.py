"""Config file and command line inputs that used to be silently ignored or mis-applied.

A line the operator wrote that pgpush ignores without a word is a trap in a backup tool: the
pgBackRest spelling ``[global:archive-push]`` was never read, a section for a command that does
not exist was skipped, ``stanza`` in a stanza section was dropped, and a repeated option on the
command line silently kept the last value.  Options set for ``push``/``get`` did not reach the
background parents and workers that do that work.
"""

from __future__ import annotations

import pytest

from pgpush import config
from pgpush.errors import OptionInvalidError, OptionInvalidValueError

ENV = {"PGPUSH_STANZA": "main"}


def load(tmp_path, text: str, argv: list[str]) -> config.Config:
    path = tmp_path / "pgpush.conf"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return config.load([f"--config={path}", *argv], dict(ENV))


@pytest.mark.parametrize("section", ["global:archive-push", "main:archive-push", "global:push", "main:push"])
@pytest.mark.parametrize("argv", [["push", "pg_wal/000000010000000000000001"], ["push-async", "/pg/pg_wal"],
                                  ["worker", "push"]], ids=["foreground", "parent", "worker"])
def test_push_sections_in_either_spelling_reach_the_foreground_the_parent_and_its_workers(tmp_path, section, argv):
    cfg = load(tmp_path, f"[global]\nprocess-max=2\n[{section}]\nprocess-max=4\ncompress-type=none\n", argv)
    assert (cfg["process-max"], cfg["compress-type"]) == (4, "none"), cfg.sources
    assert f"[{section.replace('archive-', '')}]" in cfg.sources["process-max"]


@pytest.mark.parametrize("argv", [["get", "000000010000000000000001", "p"], ["get-async", "/pg"], ["worker", "get"]])
def test_get_sections_reach_the_get_parent_and_its_workers_not_push(tmp_path, argv):
    cfg = load(tmp_path, "[global:archive-get]\nprocess-max=5\n[global:archive-push]\nprocess-max=7\n", argv)
    assert cfg["process-max"] == 5


@pytest.mark.parametrize("text,match", [
    ("[global]\n[main:bogus]\nprocess-max=2\n", r"invalid section \[main:bogus\].*line 3"),
    ("[]\nprocess-max=2\n", r"invalid section \[\]"),
    ("[global:help]\nprocess-max=2\n", r"invalid section \[global:help\]"),
    ("[bad stanza]\nprocess-max=2\n", r"invalid section \[bad stanza\]"),
    ("[main:push:x]\nprocess-max=2\n", r"invalid section"),
    ("[main]\nstanza=other\n", r"'stanza' may only be set in section \[global\], not in \[main\].*line 2"),
    ("[global:push]\nprocess-max=2\n[global:archive-push]\nprocess-max=3\n", r"set twice.*lines 2 and 4"),
])
def test_a_section_or_key_no_command_would_read_is_an_error_naming_it(tmp_path, text, match):
    with pytest.raises(OptionInvalidValueError, match=match) as err:
        load(tmp_path, text, ["version"])
    assert err.value.code == 32


def test_a_byte_order_mark_at_the_start_of_the_file_is_not_part_of_the_first_line(tmp_path):
    cfg = load(tmp_path, b"\xef\xbb\xbf[global]\r\nprocess-max=3\r\n", ["info"])
    assert cfg["process-max"] == 3


@pytest.mark.parametrize("argv", [["--stanza=a", "--stanza=b", "info"], ["info", "--process-max=2", "--process-max", "3"],
                                  ["--archive-async", "--no-archive-async", "info"], ["--no-archive-async", "info",
                                                                                       "--archive-async"]])
def test_an_option_repeated_on_the_command_line_is_a_usage_error_not_last_one_wins(tmp_path, argv):
    with pytest.raises(OptionInvalidError, match="cannot be set multiple times") as err:
        load(tmp_path, "", argv)
    assert err.value.code == 31


@pytest.mark.parametrize("key", ["repo1-path", "spool-path", "log-path", "pg1-path", "pg1-socket-path"])
@pytest.mark.parametrize("where", ["cli", "env", "file"])
def test_a_relative_repository_spool_log_or_data_path_is_refused_naming_the_key(tmp_path, key, where):
    """archive_command runs in the data directory, ``backup`` wherever cron starts it: a relative
    path would name a different directory for each (an archive inside the data directory)."""
    path = tmp_path / "pgpush.conf"
    path.write_text(f"[global]\n{key}=pgpush/{key}\n" if where == "file" else "")
    argv = [f"--config={path}", "info"] + ([f"--{key}=pgpush"] if where == "cli" else [])
    env = dict(ENV, **({"PGPUSH_" + key.upper().replace("-", "_"): "./pgpush"} if where == "env" else {}))
    with pytest.raises(OptionInvalidValueError, match=f"option '{key}' .* an absolute path") as err:
        config.load(argv, env)
    assert err.value.code == 32


def test_a_child_command_line_never_repeats_an_option_its_parent_adds(tmp_path):
    """The parent starts its workers with ``--exec-id=OURS`` plus its own command-line options: an
    exec-id given to the foreground must not travel too (repeated, the workers would refuse it)."""
    cfg = load(tmp_path, "", ["--exec-id=1-abcdef01", "--process-max=2", "push-async", "/pg/pg_wal"])
    argv = ["worker", "push", "--exec-id=2-00000000", *cfg.to_argv()]
    child = config.load(argv, dict(ENV))
    assert (child["exec-id"], child["process-max"]) == ("2-00000000", 2)


@pytest.mark.parametrize("key", ["archive-timeout", "protocol-timeout", "repo1-host-timeout"])
def test_a_timeout_of_zero_is_refused_as_pgbackrest_does_while_a_tenth_of_a_second_is_accepted(tmp_path, key):
    """With 0 every wait ends before it starts (protocol-timeout=0 leaves no worker time to answer)."""
    with pytest.raises(OptionInvalidValueError, match=f"option '{key}' .* from 0.1 to") as err:
        load(tmp_path, "", [f"--{key}=0", "info"])
    assert err.value.code == 32
    assert load(tmp_path, "", [f"--{key}=0.1", "info"])[key] == 0.1
