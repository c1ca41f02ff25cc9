"""Several repositories for one test (docs/operations.md, "Several repositories"): a backup host over
SFTP (a real sshd) as repo1 and a SeaweedFS bucket as repo2, and what each holds.

The harness servers give their options under repo1's names; :func:`as_repo` renumbers them.
"""

from __future__ import annotations

from pathlib import Path

from pgpush_env import Pgpush

S3_PREFIX = "repo"  # repoN-path=/repo in the bucket: keys are repo/archive/STANZA/...


def as_repo(options: dict[str, str], index: int) -> dict[str, str]:
    """``repo1-*`` options as repository ``index``'s (``repo1-path`` -> ``repo2-path``)."""
    return {(f"repo{index}-" + key[6:] if key.startswith("repo1-") else key): value for key, value in options.items()}


def sftp_s3_options(sshd, seaweed) -> dict[str, str]:
    """repo1 on the sshd's backup host, repo2 in the SeaweedFS bucket."""
    return {**sshd.pgpush_options(), **as_repo(seaweed.pgpush_options(f"/{S3_PREFIX}"), 2)}


def sftp_s3_pgpush(pgpush_cmd, work_dir: Path, sshd, seaweed, **opts) -> Pgpush:
    """A :class:`Pgpush` whose repo1 is the sshd's and repo2 the bucket."""
    return Pgpush(pgpush_cmd, work_dir, repo=sftp_s3_options(sshd, seaweed), **opts)


def _segment_sha1(name: str) -> tuple[str, str] | None:
    """``(WAL file, sha1)`` from an archived file's name, None for what is not one."""
    if len(name) > 25 and name[24] == "-":
        return name[:24], name[25:65]
    return None


def archived_sftp(sshd, stanza: str = "main") -> dict[str, list[str]]:
    """``{WAL file: [sha1 of each archived copy]}`` in the sshd's repository (read from its directory)."""
    out: dict[str, list[str]] = {}
    root = Path(sshd.repo_dir) / "archive" / stanza
    for path in root.glob("*/*/*"):
        found = _segment_sha1(path.name)
        if found and not path.name.endswith(".pgpush.tmp"):
            out.setdefault(found[0], []).append(found[1])
    return out


def archived_bucket(seaweed, stanza: str = "main") -> dict[str, list[str]]:
    """``{WAL file: [sha1 of each archived copy]}`` in the bucket's repository."""
    from test_s3_e2e import bucket_keys

    out: dict[str, list[str]] = {}
    for key in bucket_keys(seaweed, f"{S3_PREFIX}/archive/{stanza}/"):
        found = _segment_sha1(key.rsplit("/", 1)[-1])
        if found:
            out.setdefault(found[0], []).append(found[1])
    return out
