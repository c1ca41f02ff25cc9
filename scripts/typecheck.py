"""Type-check pgpush/ with mypy (settings in pyproject.toml): any error fails.

``make lint`` runs this.  mypy alone would do; this wrapper adds what a long run of errors hides: the
count per file, most first, and a clear failure when mypy could not check at all (a syntax error, a bad
config) rather than an exit status that reads like "errors found".

Usage: python scripts/typecheck.py [mypy arguments...]
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys

ERROR = re.compile(r"^(?P<path>[^:\s]+\.pyi?):\d+(?::\d+)?: error: ")


def main(argv: list[str] | None = None) -> int:
    mypy_args = sys.argv[1:] if argv is None else argv
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
    if total:
        print(f"typecheck: {total} mypy error(s): fix them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
