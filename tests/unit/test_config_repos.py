"""Several repositories in the options (docs/operations.md, "Several repositories"): repo2..repo4 have
every option of repo1, with repo1's rules; a repository exists when one of its options is set; a view
reads repository N under repo1's names; ``--repo`` picks one; a child is told every repository."""

from __future__ import annotations

import pytest

from pgpush import config
from pgpush.errors import OptionInvalidError, OptionInvalidValueError
from pgpush.options import BY_NAME, DOCUMENTED, REPO_MAX


def load(argv: list[str], env: dict[str, str] | None = None, conf: str | None = None, tmp_path=None) -> config.Config:
    if conf is not None:
        path = tmp_path / "pgpush.conf"
        path.write_text(conf)
        argv = [f"--config={path}", *argv]
    return config.load(argv, env or {})


def test_every_repo1_option_exists_for_each_repository_with_its_type_and_default():
    for opt in DOCUMENTED:
        if not opt.name.startswith("repo1-"):
            continue
        for index in range(2, REPO_MAX + 1):
            other = BY_NAME[f"repo{index}-" + opt.name[6:]]
            assert (other.type, other.default, other.choices, other.secret, other.section) == \
                   (opt.type, opt.default, opt.choices, opt.secret, opt.section)
    assert "repo5-path" not in BY_NAME


def test_repo1_rules_apply_to_the_other_repositories():
    with pytest.raises(OptionInvalidValueError, match="'repo3-path' has invalid value 'relative'.*absolute"):
        load(["--repo3-path=relative", "info"])
    with pytest.raises(OptionInvalidValueError, match="'repo2-host-port'.*1 to 65535"):
        load(["--repo2-host-port=0", "info"])
    with pytest.raises(OptionInvalidValueError, match="'repo4-host-timeout'"):
        load(["--repo4-host-timeout=0", "info"])
    with pytest.raises(OptionInvalidValueError, match="'repo2-type'.*posix, sftp, s3"):
        load(["--repo2-type=ftp", "info"])


def test_a_repository_exists_when_one_of_its_options_is_set(tmp_path):
    assert load(["--stanza=main", "info"]).repo_indexes() == [1]
    cfg = load(["--stanza=main", "info"], {"PGPUSH_REPO3_PATH": "/r3"},
               "[global]\nrepo2-path=/r2\n", tmp_path)
    assert cfg.repo_indexes() == [1, 2, 3]
    assert [r.repo_label for r in cfg.repos()] == ["repo1", "repo2", "repo3"]


def test_a_view_reads_repository_n_under_repo1_names_with_its_sources(tmp_path):
    cfg = load(["--stanza=main", "--repo1-path=/one", "info"], {"PGPUSH_REPO2_CIPHER_PASS": "s3cret"},
               "[main]\nrepo2-path=/two\nrepo2-cipher-type=aes-256-gcm\n", tmp_path)
    two = cfg.repo(2)
    assert (two["repo1-path"], two["repo1-cipher-type"], two["repo1-cipher-pass"]) == ("/two", "aes-256-gcm", "s3cret")
    assert two["repo1-type"] == "posix" and two["repo1-host-timeout"] == 30.0  # defaults, not repo1's values
    assert two.sources["repo1-path"].startswith("in section [main]")
    assert two.key("repo1-path") == "repo2-path" and two.repo_label == "repo2"
    assert cfg.repo(1) is cfg and cfg["repo1-path"] == "/one"
    assert two.stanza == "main" and two.root is cfg


def test_a_child_is_told_every_repository_never_a_renamed_one():
    cfg = load(["--stanza=main", "--repo1-path=/one", "--repo2-path=/two", "--repo2-s3-key-secret=zz", "info"])
    two = cfg.repo(2)
    assert two.to_argv() == cfg.to_argv() == ["--repo1-path=/one", "--repo2-path=/two", "--stanza=main"]
    assert two.secret_env() == {"PGPUSH_REPO2_S3_KEY_SECRET": "zz"}


def test_repo_selects_one_configured_repository():
    cfg = load(["--stanza=main", "--repo2-path=/two", "--repo=2", "info"])
    assert [r.repo_index for r in cfg.repos()] == [2]
    with pytest.raises(OptionInvalidValueError, match="repo3 is not configured.*configured: repo1, repo2"):
        load(["--stanza=main", "--repo2-path=/two", "--repo=3", "info"]).repos()
    with pytest.raises(OptionInvalidValueError, match="'repo' has invalid value '5'.*1 to 4"):
        load(["--repo=5", "info"])
    with pytest.raises(OptionInvalidError, match="'repo' is not valid for command 'push'"):
        load(["--repo=1", "push", "x"])


def test_the_default_path_of_an_unset_repository_is_never_taken_for_a_configured_one():
    """repo2 configured by its type alone has the default path, as repo1 would: it is the operator's
    to set; the view must not borrow repo1's.  Both at the default is one store twice: refused."""
    cfg = load(["--repo1-path=/one", "--repo2-type=posix", "info"])
    assert cfg.repo(2)["repo1-path"] == "/var/lib/pgpush"
    with pytest.raises(OptionInvalidValueError, match="repo1 and repo2 are the same repository"):
        load(["--repo2-type=posix", "info"]).repos()


def test_two_names_for_one_store_are_refused_but_the_same_path_elsewhere_is_not():
    with pytest.raises(OptionInvalidValueError, match="repo1 and repo3 are the same repository"):
        load(["--repo1-path=/one/", "--repo3-path=/one", "info"]).repos()
    cfg = load(["--repo1-path=/one", "--repo2-type=sftp", "--repo2-host=backup", "--repo2-path=/one", "info"])
    assert [r.repo_label for r in cfg.repos()] == ["repo1", "repo2"]


def test_a_path_spelled_another_way_is_the_same_store_on_a_file_system_not_on_s3():
    """``/one//x``, ``/one/./x`` and ``/one/y/../x`` are ``/one/x`` on a file system: two repositories
    there were one store twice (a backup waited on the catalog lock it held itself).  An S3 key
    is not resolved: ``a//b`` is another key than ``a/b``."""
    for alias in ("/one//x", "/one/./x", "/one/y/../x", "//one/x"):
        with pytest.raises(OptionInvalidValueError, match="repo1 and repo2 are the same repository"):
            load(["--repo1-path=/one/x", f"--repo2-path={alias}", "info"]).repos()
        with pytest.raises(OptionInvalidValueError, match="repo1 and repo2 are the same repository"):
            load(["--repo1-type=sftp", "--repo1-host=h", "--repo1-path=/one/x", "--repo2-type=sftp",
                  "--repo2-host=h", f"--repo2-path={alias}", "info"]).repos()
    s3 = ["--repo1-type=s3", "--repo1-s3-bucket=b", "--repo1-s3-endpoint=e", "--repo1-path=/one/x",
          "--repo2-type=s3", "--repo2-s3-bucket=b", "--repo2-s3-endpoint=e", "--repo2-path=/one//x", "info"]
    assert len(load(s3).repos()) == 2


def test_stanza_create_creates_in_every_repository_and_a_failing_one_does_not_keep_it_from_the_others(tmp_path, capsys):
    """Adding a repository to a running cluster is stanza-create again (docs/operations.md): repo1's stanza is
    checked, repo2's created; a repository that cannot be written is the error, named, after the others."""
    import shutil
    from pathlib import Path

    from pgpush.commands import stanza
    from pgpush.errors import PgPushError

    pgdata = tmp_path / "pg"
    (pgdata / "global").mkdir(parents=True)
    shutil.copy(Path(__file__).parent / "data" / "pg15.pg_control", pgdata / "global" / "pg_control")
    base = ["--stanza=main", f"--pg1-path={pgdata}", f"--log-path={tmp_path}", "--log-level-file=off"]
    one = load([*base, f"--repo1-path={tmp_path}/r1", "stanza-create"])
    assert stanza.create(one).startswith("stanza 'main' created")
    (tmp_path / "blocked").write_text("a file where repo3's directory would go")
    three = load([*base, f"--repo1-path={tmp_path}/r1", f"--repo2-path={tmp_path}/blocked/r3",
                  f"--repo3-path={tmp_path}/r2", "stanza-create"])
    with pytest.raises(PgPushError) as err:
        stanza.create(three)
    assert err.value.code == 103 and err.value.message.startswith("repo2: "), err.value.message
    assert (tmp_path / "r2" / "archive" / "main" / "archive.info").is_file()  # repo3 created all the same
    two = load([*base, f"--repo1-path={tmp_path}/r1", f"--repo2-path={tmp_path}/r2", "stanza-create"])
    lines = stanza.create(two).splitlines()
    assert [line.split(":")[0] for line in lines] == ["repo1", "repo2"] and all("already exists" in ln for ln in lines)
