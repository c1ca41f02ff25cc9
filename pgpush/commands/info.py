"""``info``: stanzas, the archive's range, gaps and dropped segments, backups with status.

``--output json`` is the machine contract (its keys never
change; more may be added); the text form follows pgBackRest's layout so
its users read it without a manual.  ``info`` also settles backup statuses
(``WAITING_FOR_WALS`` that became ``DONE``), with the same rules as push.
"""

from __future__ import annotations

import json
import os

from pgpush import config
from pgpush.config import Config, format_size
from pgpush.errors import FileMissingError, PgPushError
from pgpush.log import LOG
from pgpush.repo import catalog, status
from pgpush.repo.records import BackupRecord
from pgpush.repo.repository import Repository
from pgpush.storage import open_storage


def stanza_names(cfg: Config) -> list[str]:
    """``--stanza``, else the stanzas of the config file, else every stanza in the repository."""
    if cfg.get("stanza"):
        return [cfg.stanza]
    names = config.stanzas_in_config(cfg)
    if names:
        return names
    storage = open_storage(cfg)
    try:
        return sorted(d for d in storage.list_dirs("archive") if config.is_valid_stanza(d))
    finally:
        storage.close()


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


def stanza_info(cfg: Config, stanza: str) -> dict:
    """Everything ``info`` shows for one stanza; an unusable stanza is reported, not raised."""
    scfg = for_stanza(cfg, stanza)
    out: dict = {"name": stanza, "status": "ok", "archive": {"min": None, "max": None, "gaps": [], "dropped": []},
                 "backups": []}
    repo = Repository.from_config(scfg)
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
        for b in backups:
            bstate = states.get(b["archive_id"]) or status.archive_state(repo, b["archive_id"], backups)
            states[b["archive_id"]] = bstate
            out["backups"].append(backup_json(b, status.recoverable_to(b, bstate, backups)))
    except FileMissingError as exc:
        out["status"] = "error"
        out["message"] = f"missing stanza: {exc}"
    except PgPushError as exc:
        out["status"] = "error"
        out["message"] = str(exc)
        LOG.warn(f"stanza '{stanza}': {exc}")
    finally:
        repo.storage.close()
    return out


def render_text(stanzas: list[dict]) -> str:
    lines: list[str] = []
    for s in stanzas:
        lines.append(f"stanza: {s['name']}")
        if s["status"] != "ok":
            lines.append(f"    status: error ({s.get('message', '')})")
            lines.append("")
            continue
        lines.append("    status: ok")
        lines.append(f"    cipher: {s.get('cipher', 'none')}")
        lines.append("")
        db = s.get("db", {})
        lines.append("    db (current)")
        arch = s["archive"]
        if arch["min"]:
            lines.append(f"        wal archive min/max ({arch.get('archive_id')}): {arch['min']}/{arch['max']}")
        else:
            lines.append(f"        wal archive min/max ({arch.get('archive_id')}): none present")
        for first, last in arch["gaps"]:
            lines.append(f"        gap: {first}" + (f" to {last}" if last != first else "") + " missing")
        if arch["dropped"]:
            lines.append(f"        dropped by archive-push-queue-max: {', '.join(arch['dropped'])}")
        for name in arch.get("conflicts", []):
            lines.append(f"        conflict: {name} is stored twice with different content (get refuses it)")
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
            lines.append(f"            repo1: backup size: {format_size(b['repo_size'])}")
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
