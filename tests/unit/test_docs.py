"""The configuration reference is generated from the option table, and the exit-code table of
docs/operations.md from the error classes; both must match the code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pgpush.cli import docgen
from pgpush.options import DOCUMENTED as OPTIONS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
OPERATIONS = ROOT / "docs" / "operations.md"


def test_configuration_md_is_generated_from_the_option_table():
    assert DOC.read_text() == docgen.render(), "run `make docs` and commit docs/configuration.md"


def test_every_option_is_documented():
    text = DOC.read_text()
    for opt in OPTIONS:
        if opt.name != "exec-id":
            assert f"`{opt.name}`" in text


def test_exit_codes_in_operations_md_are_generated_from_errors_py():
    text = OPERATIONS.read_text()
    assert text.count(docgen.EXIT_CODES_BEGIN) == 1 and text.count(docgen.EXIT_CODES_END) == 1
    assert text == docgen.splice_exit_codes(text), "run `make docs` and commit docs/operations.md"


def test_the_exit_code_table_names_every_error_class():
    table = docgen.render_exit_codes()
    from pgpush import errors

    for name, value in vars(errors).items():
        if isinstance(value, type) and issubclass(value, errors.PgPushError) and value is not errors.PgPushError:
            assert f"| {value.code} | " in table and f"`{name}`" in table
            assert (value.__doc__ or "").strip(), f"{name} needs a docstring: it is its row in docs/operations.md"
    assert "| 1 | `WalNotFound` |" in table


def test_splice_refuses_a_file_without_the_markers():
    with pytest.raises(ValueError, match="markers"):
        docgen.splice_exit_codes("# no table here\n")


def _codes_given_by_number(path: Path) -> list[tuple[int, int]]:
    """``(line, code)`` of every ``PgPushError(message, CODE)`` whose code is a literal or a module constant."""
    tree = ast.parse(path.read_text())
    constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int)
                 for target in node.targets if isinstance(target, ast.Name)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)) != "PgPushError":
            continue
        arg = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "code"), None)
        if isinstance(arg, ast.Constant) and isinstance(arg.value, int):
            found.append((node.lineno, arg.value))
        elif isinstance(arg, ast.Name) and arg.id in constants:
            found.append((node.lineno, constants[arg.id]))
    return found


def test_every_code_given_by_number_is_in_the_exit_code_table():
    """``PgPushError(message, 50)`` exits 50 too: its code must have a row (a class in pgpush/errors.py)."""
    documented = set(docgen.exit_codes())
    missing = [f"{path.relative_to(ROOT)}:{line}: code {code}"
               for path in sorted((ROOT / "pgpush").rglob("*.py")) for line, code in _codes_given_by_number(path)
               if code not in documented]
    assert not missing, "codes with no class in pgpush/errors.py (so no row in docs/operations.md):\n" + "\n".join(missing)


def test_every_error_class_is_used_by_the_code():
    """A row of the exit-code table that nothing raises documents a code pgpush never exits with (the
    catalog lock once raised its 50 by number while ``LockAcquireError`` stood unused)."""
    from pgpush import errors

    names = [name for name, value in vars(errors).items()
             if isinstance(value, type) and issubclass(value, (errors.PgPushError, errors.WalNotFound))
             and value is not errors.PgPushError]
    used: set[str] = set()
    # The zipapp's entry raises HostNotSupportedError (imported under another name) and repeats its code.
    for path in [*(ROOT / "pgpush").rglob("*.py"), *(ROOT / "zipapp_root").glob("*.py")]:
        if path.name in ("errors.py", "docgen.py") and path.parent.name in ("pgpush", "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name):
                used.add(node.id)
            elif isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.ImportFrom) and node.module == "pgpush.errors":
                used |= {alias.name for alias in node.names}
    unused = [name for name in names if name not in used]
    assert not unused, f"error classes nothing in pgpush/ (or zipapp_root/) raises: {unused}"
