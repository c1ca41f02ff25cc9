"""Fixtures of the unit tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    """A file of ``zipapp_root/`` as a module: those files run from inside the zipapp, not as part
    of the pgpush package, so the tests load them by path (under a name no import can clash with)."""
    spec = importlib.util.spec_from_file_location(f"pgpush_zipapp_{Path(name).stem.strip('_')}", ROOT / "zipapp_root" / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_zipapp_file() -> Callable[[str], ModuleType]:
    """The loader of :func:`_load`: ``load_zipapp_file("__main__.py")``."""
    return _load
