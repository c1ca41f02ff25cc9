"""The configuration reference is generated from the option table and must match it."""

from __future__ import annotations

from pathlib import Path

from pgpush.cli import docgen
from pgpush.options import OPTIONS

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_md_is_generated_from_the_option_table():
    assert DOC.read_text() == docgen.render(), "run `make docs` and commit docs/configuration.md"


def test_every_option_is_documented():
    text = DOC.read_text()
    for opt in OPTIONS:
        if opt.name != "exec-id":
            assert f"`{opt.name}`" in text
