"""Type-check pgpush/ with mypy (settings in pyproject.toml) and hold the error count to a budget.

``make lint`` runs this. The code was written before a type checker ran over it and is being moved between
modules (issue #13), so the check starts as a ratchet: the run fails when mypy finds more errors than
``--max-errors`` (the Makefile's ``MYPY_MAX_ERRORS``), and says so when it finds fewer, so the budget only goes
down until it is 0 and the option can go. A mypy that cannot check at all (a syntax error, a bad config) fails
whatever the budget.

Usage: python scripts/typecheck.py [--max-errors N] [mypy arguments...]
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys

ERROR = re.compile(r"^(?P<path>[^:\s]+\.pyi?):\d+(?::\d+)?: error: ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-errors", type=int, default=0, help="errors tolerated (default 0)")
    args, mypy_args = parser.parse_known_args(argv)
    out = subprocess.run([sys.executable, "-m", "mypy", *mypy_args], capture_output=True, text=True)
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    if out.returncode not in (0, 1) or "prevented further checking" in out.stdout:
        print(f"typecheck: mypy could not check the code (exit {out.returncode})", file=sys.stderr)
        return 2
    per_file = collections.Counter(m["path"] for m in map(ERROR.match, out.stdout.splitlines()) if m)
    total = sum(per_file.values())
    if out.returncode == 1 and not total:
        print("typecheck: mypy failed without an error line", file=sys.stderr)
        return 2
    for path, count in sorted(per_file.items(), key=lambda item: (-item[1], item[0])):
        print(f"{count:5d}  {path}")
    if total > args.max_errors:
        print(f"typecheck: {total} mypy error(s), {args.max_errors} tolerated: fix the new ones", file=sys.stderr)
        return 1
    if total < args.max_errors:
        print(f"typecheck: {total} mypy error(s), fewer than the {args.max_errors} tolerated: lower MYPY_MAX_ERRORS "
              f"in the Makefile to {total}")
    else:
        print(f"typecheck: {total} mypy error(s), as many as tolerated ({args.max_errors})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
