"""Options: precedence at every level, types, units, and errors naming the key and its source."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pgpush import config
from pgpush.errors import CommandError, OptionInvalidError, OptionInvalidValueError, OptionRequiredError


def write_conf(tmp_path, text: str) -> str:
    path = tmp_path / "pgpush.conf"
    path.write_text(text)
    return str(path)


CONF = """
[global]
process-max=2
compress-type=gz
log-level-console=info
repo1-path=/repo/global

[global:push]
process-max=3
repo1-path=/repo/global-push

[main]
process-max=4
repo1-path=/repo/main

[main:push]
process-max=5
"""


@pytest.mark.parametrize(
    ("argv", "env", "expected", "source"),
    [
        (["--stanza=main", "push", "x"], {}, 5, "in section [main:push]"),
        (["--stanza=main", "get", "x", "y"], {}, 4, "in section [main]"),
        (["--stanza=other", "push", "x"], {}, 3, "in section [global:push]"),
        (["--stanza=other", "get", "x", "y"], {}, 2, "in section [global]"),
        (["--stanza=main", "push", "x"], {"PGPUSH_PROCESS_MAX": "6"}, 6, "in environment variable PGPUSH_PROCESS_MAX"),
        (["--stanza=main", "push", "x", "--process-max=7"], {"PGPUSH_PROCESS_MAX": "6"}, 7, "on the command line"),
        (["--process-max", "8", "--stanza=main", "push", "x"], {}, 8, "on the command line"),
    ],
)
def test_precedence_every_level(tmp_path, argv, env, expected, source):
    path = write_conf(tmp_path, CONF)
    cfg = config.load(["--config", path] + argv, env)
    assert cfg["process-max"] == expected
    assert cfg.sources["process-max"].startswith(source)


def test_default_when_nowhere_given(tmp_path):
    cfg = config.load(["--config", write_conf(tmp_path, "[global]\n"), "push", "x"], {})
    assert cfg["process-max"] == 1
    assert cfg["compress-type"] == "zst"
    assert cfg["archive-get-queue-max"] == 128 * 1024 * 1024
    assert "process-max" not in cfg.sources


def test_stanza_from_config_file_selects_stanza_sections(tmp_path):
    path = write_conf(tmp_path, "[global]\nstanza=main\n" + CONF.replace("[global]\n", "", 1))
    cfg = config.load(["--config", path, "push", "x"], {})
    assert cfg.stanza == "main"
    assert cfg["process-max"] == 5


def test_options_after_command_and_aliases():
    cfg = config.load(["archive-push", "pg_wal/x", "--stanza=db", "--no-archive-async", "--compress-type", "lz4"], {})
    assert cfg.command == "push"
    assert cfg.args == ["pg_wal/x"]
    assert cfg["archive-async"] is False
    assert cfg["compress-type"] == "lz4"


def test_boolean_flags_and_file_values(tmp_path):
    path = write_conf(tmp_path, "[global]\narchive-async=y\n")
    assert config.load(["--config", path, "push", "x"], {})["archive-async"] is True
    assert config.load(["--config", path, "--no-archive-async", "push", "x"], {})["archive-async"] is False
    assert config.load(["--config", path, "push", "x"], {"PGPUSH_ARCHIVE_ASYNC": "n"})["archive-async"] is False


def test_unknown_key_in_file_names_key_and_place(tmp_path):
    path = write_conf(tmp_path, "[global]\nrepo1-pth=/x\n")
    with pytest.raises(OptionInvalidValueError) as err:
        config.load(["--config", path, "push", "x"], {})
    assert err.value.code == 32
    assert "repo1-pth" in str(err.value) and "[global]" in str(err.value) and path in str(err.value)


def test_bad_value_names_key_and_source(tmp_path):
    path = write_conf(tmp_path, "[main]\nprocess-max=lots\n")
    with pytest.raises(OptionInvalidValueError) as err:
        config.load(["--config", path, "--stanza=main", "push", "x"], {})
    assert "process-max" in str(err.value) and "[main]" in str(err.value)
    with pytest.raises(OptionInvalidValueError) as err:
        config.load(["push", "x"], {"PGPUSH_ARCHIVE_PUSH_QUEUE_MAX": "12XB"})
    assert "PGPUSH_ARCHIVE_PUSH_QUEUE_MAX" in str(err.value)


def test_unknown_cli_option_and_env_are_errors():
    with pytest.raises(OptionInvalidError, match="--bogus") as err:
        config.load(["--bogus=1", "push", "x"], {})
    assert err.value.code == 31  # pgBackRest's usage code for an invalid option
    with pytest.raises(OptionInvalidValueError, match="PGPUSH_BOGUS"):
        config.load(["push", "x"], {"PGPUSH_BOGUS": "1"})


def test_command_option_on_wrong_command():
    with pytest.raises(OptionInvalidError, match="not valid for command 'push'"):
        config.load(["push", "x", "--delta"], {})


def test_missing_named_config_is_error_missing_default_is_not(tmp_path):
    with pytest.raises(OptionInvalidValueError, match="does not exist"):
        config.load(["--config", str(tmp_path / "nope.conf"), "push", "x"], {})
    cfg = config.load(["push", "x"], {})
    assert cfg["config"] == "/etc/pgpush/pgpush.conf"


def test_config_from_environment(tmp_path):
    path = write_conf(tmp_path, "[global]\nprocess-max=9\n")
    assert config.load(["push", "x"], {"PGPUSH_CONFIG": path})["process-max"] == 9


def test_invalid_command_and_stanza():
    with pytest.raises(CommandError):
        config.load(["frobnicate"], {})
    with pytest.raises(OptionInvalidValueError, match="stanza"):
        config.load(["--stanza=a/b", "push", "x"], {})


def test_required_option():
    cfg = config.load(["push", "x"], {})
    with pytest.raises(OptionRequiredError) as err:
        cfg.require("stanza")
    assert err.value.code == 37


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("512", 512), ("1KB", 1024), ("16MB", 16 << 20), ("16mb", 16 << 20), ("1.5GB", 3 << 29),
     ("2GiB", 2 << 30), ("1TB", 1 << 40), ("128M", 128 << 20)],
)
def test_parse_size(text, value):
    assert config.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "MB", "12XB", "-1", "1.2.3MB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        config.parse_size(text)


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0B"), (512, "512B"), (1024, "1KB"), (1536, "1.5KB"), (16 << 20, "16MB"), (128 << 20, "128MB"),
     (500 << 20, "500MB"), (3 << 29, "1.5GB"), (1 << 40, "1TB")],
)
def test_format_size_like_pgbackrest(size, text):
    assert config.format_size(size) == text


def test_secrets_never_on_child_command_line(tmp_path):
    cfg = config.load(["--stanza=main", "--repo1-cipher-pass=s3cret", "--process-max=2", "push", "x"], {})
    argv = cfg.to_argv()
    assert "--process-max=2" in argv and not any("s3cret" in a for a in argv)
    assert cfg.secret_env() == {"PGPUSH_REPO1_CIPHER_PASS": "s3cret"}


def test_one_serialiser_for_children_and_for_commands_run_elsewhere(tmp_path):
    """``to_argv`` is what a parent gives its children (command line only) and what ``restore_command``
    repeats (environment too, a selection of options): either way secrets and exec-id stay off it,
    ``--config`` comes first, and every value reads back as itself."""
    conf = tmp_path / "pgpush.conf"
    conf.write_text("")
    env = {"PGPUSH_ARCHIVE_TIMEOUT": "1234567.5", "PGPUSH_REPO1_S3_KEY_SECRET": "s3cret", "PGPUSH_LOG_LEVEL_FILE": "off"}
    argv = ["--stanza=main", f"--config={conf}", "--repo1-path=/r e/po", "--repo1-cipher-pass=s3cret", "--no-archive-async",
            "--protocol-timeout=30", "--exec-id=1-abcdef01", "get", "x", "y"]
    cfg = config.load(argv, env)
    assert cfg.to_argv() == [f"--config={conf}", "--no-archive-async", "--protocol-timeout=30", "--repo1-path=/r e/po",
                             "--stanza=main"]
    keep = lambda name: name.startswith(("repo1-", "log-")) or name == "archive-timeout"  # noqa: E731
    elsewhere = cfg.to_argv(keep, environment=True)
    assert elsewhere == [f"--config={conf}", "--archive-timeout=1234567.5", "--log-level-file=off", "--repo1-path=/r e/po"]
    assert [n for n in cfg.given(keep, environment=True) if n.endswith(("-pass", "-secret"))] == [
        "repo1-cipher-pass", "repo1-s3-key-secret"]
    again = config.load([*elsewhere, "--stanza=main", "get", "x", "y"], {})
    assert all(again[n] == cfg[n] for n in ("archive-timeout", "log-level-file", "repo1-path"))
    for given, shown in (("0.1", "0.1"), ("60.0", "60"), ("2.50", "2.5")):
        assert config.load([f"--archive-timeout={given}", "push", "x"], {}).option_arg("archive-timeout") == (
            f"--archive-timeout={shown}")


def test_secret_value_redacted_in_errors():
    with pytest.raises(OptionInvalidValueError) as err:
        config.load(["push", "x"], {"PGPUSH_REPO1_CIPHER_PASS": ""})
    assert "<redacted>" in str(err.value)


@pytest.mark.parametrize("kind, good, bad", [("gz", 9, 10), ("zst", 22, 23), ("lz4", 16, 17)])
def test_compress_level_checked_against_the_type(tmp_path, kind, good, bad):
    path = write_conf(tmp_path, f"[main]\ncompress-type={kind}\ncompress-level={bad}\n")
    with pytest.raises(OptionInvalidValueError) as err:
        config.load(["--config", path, "--stanza=main", "push", "x"], {})
    assert str(err.value) == (f"option 'compress-level' has invalid value '{bad}' in section [main] of {path} line 3: "
                              f"0..{good} is expected for compress-type {kind}")
    assert err.value.code == 32
    cfg = config.load(["--config", path, "--stanza=main", f"--compress-level={good}", "push", "x"], {})
    assert cfg["compress-level"] == good


def test_compress_level_ignored_without_compression(tmp_path):
    path = write_conf(tmp_path, "[global]\ncompress-level=12\n[main]\ncompress-type=none\n")
    assert config.load(["--config", path, "--stanza=main", "push", "x"], {})["compress-level"] == 12


# --- inputs that used to crash or hang ----------------------------------------------------------------------


def test_non_utf8_byte_in_a_comment_is_refused_with_its_line(tmp_path):
    path = tmp_path / "pgpush.conf"
    path.write_bytes(b"[global]\n# caf\xe9\nrepo1-path=/r\n")
    with pytest.raises(OptionInvalidValueError) as err:
        config.load(["--config", str(path), "info"], {})
    assert str(err.value) == f"config file {path} line 2: not valid UTF-8 (byte 0xe9)"


def test_config_that_is_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pgpush.conf"
    os.mkfifo(fifo)
    # In a child: before the fix the open blocked for good (killed by the timeout here).
    code = f"from pgpush import config\ntry:\n config.load(['--config', {str(fifo)!r}, 'info'], {{}})\nexcept Exception as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert out.stdout.strip() == f"config file {fifo} is not a regular file", out.stderr


def test_duplicate_key_in_a_section_names_the_file_key_and_both_lines(tmp_path):
    path = write_conf(tmp_path, "[global]\nrepo1-path=/a\n[main]\nprocess-max=2\n[global]\nrepo1-path=/b\n")
    with pytest.raises(OptionInvalidValueError) as err:
        config.load(["--config", path, "info"], {})
    assert str(err.value) == (f"config file {path} line 6: option 'repo1-path' is set twice in section [global] "
                              "(first on line 2)")


@pytest.mark.parametrize("size", ["9e400", "9" * 30, "4097TB", "1e3MB", "１６MB", "-1", "nan", "inf"])
def test_absurd_or_malformed_sizes_are_refused(size):
    with pytest.raises(OptionInvalidValueError, match="archive-push-queue-max") as err:
        config.load([f"--archive-push-queue-max={size}", "info"], {})
    assert err.value.code == 32


def test_sizes_are_exact_and_bounded():
    assert config.parse_size("4096TB") == config.MAX_SIZE
    assert config.parse_size("1.5KB") == 1536
    assert config.parse_size("1234567890123457") == 1234567890123457  # no float rounding


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e309", "1e400", "-1", "31622401", "NaN"])
def test_non_finite_or_absurd_durations_are_refused(value):
    """archive-timeout=nan made the foreground wait forever (no deadline compares true with nan)."""
    with pytest.raises(OptionInvalidValueError, match="archive-timeout") as err:
        config.load([f"--archive-timeout={value}", "--stanza=main", "push", "x"], {})
    assert err.value.code == 32


@pytest.mark.parametrize(("key", "value"), [("pg1-port", "0"), ("pg1-port", "65536"), ("repo1-host-port", "99999999999"),
                                            ("repo1-retention-full", "1" * 5000), ("process-max", "٣")])
def test_integers_out_of_range_are_refused(key, value):
    with pytest.raises(OptionInvalidValueError, match=key):
        config.load([f"--{key}={value}", "info"], {})


@pytest.mark.parametrize("stanza", ["..", ".", "...", "a" * 65, "a/b", ""])
def test_stanza_that_is_not_a_safe_path_component_is_refused(stanza):
    with pytest.raises(OptionInvalidValueError, match="stanza"):
        config.load([f"--stanza={stanza}", "info"], {})
