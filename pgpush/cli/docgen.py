"""Generate ``docs/configuration.md`` from the option table, and the exit-code table of
``docs/operations.md`` from the error classes (``make docs``).

A unit test compares the committed files with this output, so the reference
and the code cannot drift.
"""

from __future__ import annotations

import re
import sys

from pgpush import errors
from pgpush.options import DOCUMENTED, REPO_NOTE, SECTION_HELP

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
        opts = [o for o in DOCUMENTED if o.section == section and not o.name == "exec-id"]
        if not opts:
            continue
        out.append(f"\n## {title}\n")
        if section == "repo":
            out.append(REPO_NOTE + "\n")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        for o in opts:
            kind = TYPE_DOC[o.type] + (" " + ", ".join(f"`{c}`" for c in o.choices) if o.choices else "")
            where = []
            if o.commands:
                # the background parents and workers are told what their foreground was: not the operator's to set
                where.append("commands: " + ", ".join(c for c in o.commands if c not in ("push-async", "get-async", "worker")))
            if not o.config:
                where.append("not in the config file")
            if o.secret:
                where.append("secret")
            note = f" ({'; '.join(where)})" if where else ""
            out.append(f"| `{o.name}` | {kind} | `{_default(o)}` | {o.help}{note} |")
    return "\n".join(out) + "\n"


# The exit-code table sits between these two lines of docs/operations.md; the prose around it is written by hand.
EXIT_CODES_BEGIN = "<!-- exit codes: generated from pgpush/errors.py by `make docs`; edit the docstrings there -->"
EXIT_CODES_END = "<!-- end of the generated exit codes -->"


def _summary(cls: type) -> str:
    """The first paragraph of a class's docstring, as one line of Markdown."""
    text = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    text = re.sub(r":\w+:`([^`]+)`", r"`\1`", text)
    return re.sub(r"``(.+?)``", r"`\1`", text).replace("|", "\\|")


def exit_codes() -> dict[int, list[type]]:
    """Every code pgpush exits with, and the classes that carry it (definition order)."""
    codes: dict[int, list[type]] = {1: [errors.WalNotFound]}
    for value in vars(errors).values():
        if (isinstance(value, type) and issubclass(value, errors.PgPushError) and value is not errors.PgPushError
                and value.__module__ == errors.__name__):
            codes.setdefault(value.code, []).append(value)
    return dict(sorted(codes.items()))


def render_exit_codes() -> str:
    out = [EXIT_CODES_BEGIN, "", "| code | error | meaning |", "|---|---|---|"]
    for code, classes in exit_codes().items():
        names = ", ".join(f"`{c.__name__}`" for c in classes)
        out.append(f"| {code} | {names} | {' '.join(_summary(c) for c in classes)} |")
    out += ["", EXIT_CODES_END]
    return "\n".join(out)


def splice_exit_codes(text: str) -> str:
    """``text`` (docs/operations.md) with the table between the markers regenerated."""
    head, begin, rest = text.partition(EXIT_CODES_BEGIN)
    _old, end, tail = rest.partition(EXIT_CODES_END)
    if not begin or not end:
        raise ValueError(f"the exit-code markers are missing: {EXIT_CODES_BEGIN!r} ... {EXIT_CODES_END!r}")
    return head + render_exit_codes() + tail


def main(argv: list[str]) -> int:
    """No argument: print docs/configuration.md. ``exit-codes FILE``: regenerate the table in FILE."""
    if not argv:
        print(render(), end="")
        return 0
    if len(argv) == 2 and argv[0] == "exit-codes":
        with open(argv[1], encoding="utf-8") as fh:
            text = fh.read()
        new = splice_exit_codes(text)
        if new != text:
            with open(argv[1], "w", encoding="utf-8") as fh:
                fh.write(new)
        return 0
    print("usage: python -m pgpush.cli.docgen [exit-codes FILE]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
