"""Entry point of pgpush.pyz: the zip's top-level ``__main__`` (see build_zipapp.py).

Runs under ``#!/usr/bin/python3 -IS``.  Stdlib only and cheap: the hot path is
answered by :func:`pgpush.__main__.main` straight from the zip (zipimport, legacy
``.pyc`` next to each ``.py``); the bundled third-party packages are made
importable by ``_pgpush_bootstrap`` only when ``main`` calls ``bootstrap``.

In order: install an excepthook that shows source lines; put this zip first on
sys.path (absolute); ``sys.exit(pgpush.__main__.main(bootstrap=_bootstrap))``.
"""

import os
import sys


def _bootstrap() -> None:
    import _pgpush_bootstrap

    try:
        _pgpush_bootstrap.bootstrap()
    except _pgpush_bootstrap.BootstrapError as exc:
        from pgpush.errors import PathCreateError  # reported by the guarded entry, as 047

        raise PathCreateError(str(exc)) from None


def _archive_first() -> None:
    """Put this zip, as an absolute path, first on sys.path.

    Python puts ``sys.argv[0]`` as given there; a relative entry would break the
    lazy imports of a process that changes its directory.  zipimport keys its
    table of contents by the path string, so rather than reading the directory
    of the zip a second time we give it a copy keyed by the absolute path.
    """
    archive = os.path.dirname(__file__)
    absolute = os.path.abspath(archive)
    if sys.path[:1] == [absolute]:
        return
    if archive != absolute:
        try:
            import zipimport

            toc = zipimport._zip_directory_cache.get(archive)
            if toc is not None and absolute not in zipimport._zip_directory_cache:
                prefix, cut = archive + os.sep, len(archive)
                copy = {}
                for key, entry in toc.items():
                    if not entry[0].startswith(prefix):
                        raise ValueError(entry[0])
                    copy[key] = (absolute + entry[0][cut:],) + entry[1:]
                zipimport._zip_directory_cache[absolute] = copy
        except Exception:  # noqa: BLE001 - an optimisation only: zipimport then reads the directory again
            pass
    sys.path[:] = [absolute] + [p for p in sys.path if p not in (archive, absolute)]


def _excepthook(*exc_info) -> None:
    """The interpreter's own traceback printer cannot read source lines from a zip; traceback can."""
    import traceback

    traceback.print_exception(*exc_info)


if __name__ == "__main__":
    sys.excepthook = _excepthook
    _archive_first()
    from pgpush.__main__ import main

    sys.exit(main(bootstrap=_bootstrap))
