"""``info``: stanzas, the archive's range, gaps and dropped segments, backups with status.

``--output json`` is the machine contract (its keys never
change; more may be added); the text form follows pgBackRest's layout so
its users read it without a manual.  ``info`` also settles backup statuses
(``WAITING_FOR_WALS`` that became ``DONE``), with the same rules as push.

With several repositories each is read on its own (:func:`repo_info`) and the stanza is their
union (:func:`stanza_info`): a repository that fails is reported in the stanza's ``repos`` and
the others are still shown; as with pgBackRest, ``info`` exits 0 whatever the repositories
answer (a monitor reads the statuses), and fails only when it cannot even find out which
stanzas to show.
"""

from __future__ import annotations

import json
import os

from pgpush import config, wal
from pgpush.commands import info_agree, multirepo
from pgpush.config import Config, format_size
from pgpush.errors import FileMissingError, PgPushError
from pgpush.log import LOG
from pgpush.repo import catalog, status
from pgpush.repo.records import BackupRecord
from pgpush.repo.repository import Repository
from pgpush.storage import open_storage


def stanza_names(cfg: Config) -> list[str]:
    """``--stanza``, else the stanzas of the config file, else every stanza in the repositories.

    A repository that cannot be listed is skipped with a warning when another one answers (its
    stanzas then show its error); when none does, the first one's error is the command's.
    """
    if cfg.get("stanza"):
        return [cfg.stanza]
    names = config.stanzas_in_config(cfg)
    if names:
        return names
    found: set[str] = set()
    failures: list[PgPushError] = []
    views = cfg.repos()
    for view in views:
        try:
            storage = open_storage(view)
            try:
                found.update(d for d in storage.list_dirs("archive") if config.is_valid_stanza(d))
            finally:
                storage.close()
        except PgPushError as exc:
            failures.append(exc.in_repo(view.repo_label) if multirepo.named(cfg) else exc)
    if len(failures) == len(views):
        raise failures[0]
    for failure in failures:
        LOG.warn(f"unable to list the stanzas: {failure}")
    return sorted(found)


def for_stanza(cfg: Config, stanza: str):
    """The options as resolved for ``stanza`` (its own config sections apply, e.g. a repo1-path)."""
    if cfg.get("stanza") == stanza:
        return cfg
    env = dict(os.environ)
    env.update(cfg.secret_env())
    return config.load(cfg.to_argv() + [f"--stanza={stanza}", cfg.command] + list(cfg.args), env)


def backup_json(record: BackupRecord, recoverable_to: str | None) -> dict:
    """One backup in the JSON contract's shape (the fixed keys first, then extras)."""
    out = {k: record.get(k) for k in ("label", "type", "status", "from_standby", "start_lsn", "stop_lsn",
                                      "wal_start", "wal_stop", "start_time", "stop_time", "size", "repo_size")}
    out["recoverable_to"] = recoverable_to
    for k in ("prior", "reference", "timeline", "backup_size", "file_count", "archive_id", "pg_version",
              "status_detail"):
        out[k] = record.get(k)
    return out


def repo_info(rcfg: Config, stanza: str) -> dict:
    """What one repository holds of ``stanza``; a repository that fails is reported, not raised.

    Keys: ``repo``, ``status`` (``ok``, ``missing-stanza`` or ``error``), ``code`` and ``message``;
    when it answered also ``cipher``, ``db``, ``archive`` and ``backups`` as the stanza shows them,
    and ``copy`` (the :class:`info_agree.Copy` compared with the other repositories).
    """
    out: dict = {"repo": rcfg.repo_index, "status": "ok", "code": 0, "message": "ok"}
    try:
        repo = Repository.from_config(rcfg)
    except PgPushError as exc:  # its options are wrong (a cipher-type without a cipher-pass)
        if not multirepo.named(rcfg):
            raise  # as with one repository always: the command fails
        return _failed(out, rcfg, stanza, exc)
    try:
        info = repo.load_archive_info()
        aid = repo.archive_id()
        out["cipher"] = (info.get("cipher") or {}).get("type", "none")
        out["db"] = {"version": info["db"]["version"], "system_id": info["db"]["system-id"], "archive_id": aid}
        backups = catalog.Catalog(repo).reconciled()
        states: dict[str, status.ArchiveState] = {}
        backups = catalog.evaluate_all(repo, backups, states)
        if aid not in states:
            states[aid] = status.archive_state(repo, aid, backups)
        state = states[aid]
        names = sorted(state.archived)
        out["archive"] = {
            "min": names[0] if names else None,
            "max": names[-1] if names else None,
            "gaps": status.gaps(names, state.dropped, state.segment_size) if state.segment_size else [],
            "dropped": sorted(state.dropped),
            "conflicts": sorted(state.conflicts),
            "archive_id": aid,
        }
        out["backups"] = []
        for b in backups:
            bstate = states.get(b["archive_id"]) or status.archive_state(repo, b["archive_id"], backups)
            states[b["archive_id"]] = bstate
            out["backups"].append({**backup_json(b, status.recoverable_to(b, bstate, backups)), "repo": repo.index})
        out["copy"] = info_agree.Copy(repo.label, info["db"]["system-id"], info["db"]["version"], aid,
                                      {n for n in names if wal.is_segment(n)}, state.segment_size,
                                      [(b["start_time"], b["label"], b["status"]) for b in backups])
    except PgPushError as exc:
        return _failed(out, rcfg, stanza, exc)
    finally:
        repo.storage.close()
    return out


def _failed(out: dict, rcfg: Config, stanza: str, exc: PgPushError) -> dict:
    """``out`` for a repository that did not answer (as :func:`repo_info` reports it)."""
    for key in ("cipher", "db", "archive", "backups", "copy"):
        out.pop(key, None)
    out["code"] = exc.code
    if isinstance(exc, FileMissingError):
        out["status"], out["message"] = "missing-stanza", f"missing stanza: {exc}"
    else:
        out["status"], out["message"] = "error", str(exc)
        shown = exc.in_repo(rcfg.repo_label) if multirepo.named(rcfg) else exc
        LOG.warn(f"stanza '{stanza}': {shown}")
    return out


def stanza_info(cfg: Config, stanza: str) -> dict:
    """Everything ``info`` shows for one stanza, in every repository; an unusable one is reported, not raised.

    The stanza's ``archive``, ``cipher`` and ``db`` are those of the first repository that
    answered (``archive.repo`` says which), ``archives`` has every answering repository's range,
    ``backups`` every copy of every backup (``repo`` says where; oldest first), ``repos`` each
    repository's status and ``repos_status`` whether they agree (:mod:`info_agree`).  ``status``
    is ``error`` only when no repository answered.
    """
    scfg = for_stanza(cfg, stanza)
    per = [repo_info(view, stanza) for view in scfg.repos()]
    answered = [r for r in per if r["status"] == "ok"]
    out: dict = {"name": stanza, "status": "ok",
                 "archive": {"min": None, "max": None, "gaps": [], "dropped": [], "repo": None}, "backups": []}
    if answered:
        first = answered[0]
        out["archive"] = {**first["archive"], "repo": first["repo"]}
        out["cipher"], out["db"] = first["cipher"], first["db"]
    else:
        out["status"] = "error"
        out["message"] = per[0]["message"] if len(per) == 1 else "; ".join(
            multirepo.name(r["message"], f"repo{r['repo']}") for r in per)
    out["archives"] = [{"repo": r["repo"], **r["archive"]} for r in answered]
    copies = [b for r in answered for b in r["backups"]]
    out["backups"] = sorted(copies, key=lambda b: (b["start_time"], b["label"]))  # stable: repo1's copy first
    out["repos"] = [{k: r[k] for k in ("repo", "status", "code", "message", "cipher") if k in r} for r in per]
    errors = [_repo_status_line(r) for r in per if r["status"] != "ok"]
    out["repos_status"] = info_agree.summary(errors, *info_agree.disagreements([r["copy"] for r in answered]))
    return out


def _repo_status_line(r: dict) -> str:
    """``repo2: ok`` / ``repo2: error (103) unable to find ...``: a repository in ``info``'s text and ``repos_status``."""
    return f"repo{r['repo']}: ok" if r["status"] == "ok" else f"repo{r['repo']}: error ({r['code']:03d}) {multirepo.one_line(r['message'])}"


def _repos_text(s: dict) -> list[str]:
    """The stanza's status with several repositories: the stanza's, then each repository's, whether they
    agree, and the cipher (``mixed`` when they differ)."""
    lines = [f"    status: {s['status']}"] + [f"        {_repo_status_line(r)}" for r in s["repos"]]
    found = s["repos_status"]["disagree"]
    if found:
        lines.append(f"    repositories disagree: {'; '.join(found)}")
    ciphers = [(r["repo"], r["cipher"]) for r in s["repos"] if "cipher" in r]
    if ciphers:
        kinds = {c for _, c in ciphers}
        lines.append(f"    cipher: {kinds.pop()}" if len(kinds) == 1 else
                     "    cipher: mixed (" + ", ".join(f"repo{n}: {c}" for n, c in ciphers) + ")")
    return lines


def _archive_text(arch: dict, at: str) -> list[str]:
    lines = []
    if arch["min"]:
        lines.append(f"        {at}wal archive min/max ({arch.get('archive_id')}): {arch['min']}/{arch['max']}")
    else:
        lines.append(f"        {at}wal archive min/max ({arch.get('archive_id')}): none present")
    for first, last in arch["gaps"]:
        lines.append(f"        {at}gap: {first}" + (f" to {last}" if last != first else "") + " missing")
    if arch["dropped"]:
        lines.append(f"        {at}dropped by archive-push-queue-max: {', '.join(arch['dropped'])}")
    for name in arch.get("conflicts", []):
        lines.append(f"        {at}conflict: {name} is stored twice with different content (get refuses it)")
    return lines


def render_text(stanzas: list[dict]) -> str:
    """pgBackRest's layout.  With one repository (repo1) exactly as before there were several; with
    several, each repository's status and archive lines are named, and each copy of a backup is
    listed with its own status and the repository it is in (its ``repoN: backup size`` line)."""
    lines: list[str] = []
    for s in stanzas:
        multi = [r["repo"] for r in s.get("repos", [])] not in ([1], [])
        lines.append(f"stanza: {s['name']}")
        if multi:
            lines += _repos_text(s)
            if s["status"] != "ok":
                lines.append("")
                continue
        elif s["status"] != "ok":
            lines.append(f"    status: error ({s.get('message', '')})")
            lines.append("")
            continue
        else:
            lines.append("    status: ok")
            lines.append(f"    cipher: {s.get('cipher', 'none')}")
        lines.append("")
        db = s.get("db", {})
        lines.append("    db (current)")
        for arch in (s["archives"] if multi else [s["archive"]]):
            lines += _archive_text(arch, f"repo{arch['repo']}: " if multi else "")
        lines.append(f"        system id: {db.get('system_id')}, version: {db.get('version')}")
        for b in s["backups"]:
            lines.append("")
            lines.append(f"        {b['type']} backup: {b['label']}")
            detail = f" ({b['status_detail']})" if b.get("status_detail") else ""
            lines.append(f"            status: {b['status']}{detail}")
            lines.append(f"            from standby: {'yes' if b['from_standby'] else 'no'}")
            lines.append(f"            timestamp start/stop: {b['start_time']} / {b['stop_time']}")
            lines.append(f"            wal start/stop: {b['wal_start']} / {b['wal_stop']}")
            lines.append(f"            lsn start/stop: {b['start_lsn']} / {b['stop_lsn']}")
            lines.append(f"            database size: {format_size(b['size'])}, database backup size: "
                         f"{format_size(b.get('backup_size') or 0)}")
            lines.append(f"            repo{b.get('repo', 1)}: backup size: {format_size(b['repo_size'])}")
            if b.get("reference"):
                lines.append(f"            backup reference list: {', '.join(b['reference'])}")
            lines.append(f"            recoverable to: {b['recoverable_to'] or '-'}")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def run(cfg: Config) -> str:
    """The text or JSON to print."""
    stanzas = [stanza_info(cfg, name) for name in stanza_names(cfg)]
    if cfg["output"] == "json":
        return json.dumps(stanzas, indent=2) + "\n"
    if not stanzas:
        return "No stanzas exist in the repository.\n"
    return render_text(stanzas)
