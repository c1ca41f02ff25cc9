"""Generate ``docs/configuration.md`` from the option table (``make docs``).

A unit test compares the committed file with this output, so the reference
and the code cannot drift.
"""

from __future__ import annotations

from pgpush.options import OPTIONS, SECTION_HELP

HEADER = """# Configuration reference

Generated from `pgpush/options.py` by `make docs`; a test fails when this file and the code differ.

Every option has three spellings, highest precedence first:

1. `--key=value` (or `--key value`; booleans `--key` / `--no-key`) on the command line, before or after the command;
2. the environment: `PGPUSH_KEY` (upper case, `-` becomes `_`, e.g. `PGPUSH_REPO1_PATH`);
3. the config file: `--config PATH`, else `PGPUSH_CONFIG`, else `/etc/pgpush/pgpush.conf` (a missing default file
   is not an error, a missing named one is). INI sections, lowest precedence first: `[global]`, `[global:COMMAND]`,
   `[STANZA]`, `[STANZA:COMMAND]`. Booleans are `y`/`n` in the file.

An unknown key, or a value of the wrong type, is error 32 naming the key and where it was given (command line,
environment variable, or section and line of the file). Secrets (`repo1-cipher-pass`, `repo1-s3-key`,
`repo1-s3-key-secret`, `primary-conninfo`) are never logged, and pgpush passes them to its own child processes
through the environment, never on a command line where `ps` would show them.

Sizes are a number of bytes or a number with `KB MB GB TB` (1024-based, as pgBackRest; `KiB`, `K`… accepted),
printed as pgBackRest prints them (`16MB`, `1.5GB`). Durations are seconds; decimals allowed.
"""

TYPE_DOC = {"str": "text", "int": "integer", "bool": "boolean (y/n)", "size": "size", "duration": "seconds",
            "choice": "one of"}


def _default(opt) -> str:
    if opt.default_doc is not None:
        return opt.default_doc
    if opt.default is None:
        return "—"
    if opt.type == "bool":
        return "y" if opt.default else "n"
    if opt.type == "size":
        from pgpush.config import format_size

        return format_size(int(opt.default))
    if opt.type == "duration":
        return f"{opt.default:g}"
    return str(opt.default)


def render() -> str:
    out = [HEADER]
    for section, title in SECTION_HELP.items():
        opts = [o for o in OPTIONS if o.section == section and not o.name == "exec-id"]
        if not opts:
            continue
        out.append(f"\n## {title}\n")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        for o in opts:
            kind = TYPE_DOC[o.type] + (" " + ", ".join(f"`{c}`" for c in o.choices) if o.choices else "")
            where = []
            if o.commands:
                where.append("commands: " + ", ".join(o.commands))
            if not o.config:
                where.append("not in the config file")
            if o.secret:
                where.append("secret")
            note = f" ({'; '.join(where)})" if where else ""
            out.append(f"| `{o.name}` | {kind} | `{_default(o)}` | {o.help}{note} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
