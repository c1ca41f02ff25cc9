"""Every option name written as a literal in the code is in the option table (``pgpush/options.py``).

``cfg["repo1-pth"]`` is a KeyError, and ``cfg.get("repo1-pth")`` is worse: a silent None, i.e. a default where the
operator set a value. Both are typos no type checker sees (the key is a string), and the line may run only on a
rare path (a retry, an error message), so the code is read here instead of run: subscripts and ``get`` /
``require`` calls on a configuration (any name or attribute ending in ``cfg``, its ``values`` and ``sources``,
and in ``config.py`` the local ``values``/``sources`` tables), ``"key" in cfg.sources`` and ``BY_NAME[...]``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pgpush.options import BY_NAME, DOCUMENTED

PKG = Path(__file__).resolve().parents[2] / "pgpush"
TABLES = ("values", "sources")


def _is_config(node: ast.expr, in_config_module: bool) -> bool:
    """A configuration or one of its per-option tables."""
    if isinstance(node, ast.Name):
        return node.id.endswith("cfg") or (in_config_module and node.id in TABLES)
    if isinstance(node, ast.Attribute):
        if node.attr.endswith("cfg"):
            return True
        if node.attr in TABLES:
            base = node.value
            return _is_config(base, False) or (in_config_module and isinstance(base, ast.Name) and base.id == "self")
    return False


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def option_keys(path: Path, shown: str) -> list[tuple[str, str]]:
    """``(where, key)`` for every option name written as a literal in the file."""
    in_config = path.name == "config.py" and path.parent.name == "pgpush"
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        keys: list[str | None] = []
        if isinstance(node, ast.Subscript):
            value = node.value
            if _is_config(value, in_config) or (isinstance(value, ast.Name) and value.id == "BY_NAME"):
                keys.append(_literal(node.slice))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, method = node.func.value, node.func.attr
            is_table = _is_config(owner, in_config) or (isinstance(owner, ast.Name) and owner.id == "BY_NAME")
            if method in ("get", "require") and is_table and node.args:
                keys.append(_literal(node.args[0]))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            if _is_config(node.comparators[0], in_config):
                keys.append(_literal(node.left))
        found.extend((f"{shown}:{getattr(node, 'lineno', 0)}", key) for key in keys if key is not None)
    return found


def unknown_keys(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        for where, key in option_keys(path, str(path.relative_to(root.parent))):
            if key not in BY_NAME:
                out.append(f"{where}: option {key!r} is not in pgpush/options.py")
    return out


def test_every_literal_option_key_is_in_the_option_table():
    problems = unknown_keys(PKG)
    assert not problems, "\n".join(problems)


def test_the_scan_finds_option_keys_at_all():
    """A scan that finds nothing passes for nothing: it must see the common spellings in the real code."""
    keys = {key for path in PKG.rglob("*.py") for _where, key in option_keys(path, path.name)}
    assert {"repo1-path", "repo1-type", "archive-async", "stanza", "process-max", "spool-path"} <= keys


def test_the_scan_sees_every_spelling_of_a_typo(tmp_path):
    root = tmp_path / "pgpush"
    root.mkdir()
    (root / "mod.py").write_text(
        "def f(cfg, self, scfg):\n"
        "    a = cfg['repo1-pth']\n"
        "    b = self.cfg.get('spool-pth')\n"
        "    c = scfg.require('pg1-pth')\n"
        "    d = cfg.values.get('log-pth')\n"
        "    e = 'type-x' in cfg.sources\n"
        "    h = BY_NAME['stanzaa']\n"
        "    ok = cfg['repo1-path'], cfg.get('stanza'), other['not-an-option'], cfg[name]\n"
    )
    (root / "config.py").write_text("def load():\n    values = {}\n    return values.get('confg')\n")
    found = "\n".join(unknown_keys(root))
    for line, key in ((2, "repo1-pth"), (3, "spool-pth"), (4, "pg1-pth"), (5, "log-pth"), (6, "type-x"),
                      (7, "stanzaa")):
        assert f"pgpush/mod.py:{line}: option {key!r}" in found
    assert "pgpush/config.py:3: option 'confg'" in found
    assert "repo1-path" not in found and "not-an-option" not in found


# What Config.__getitem__ is declared to return for each group of keys in pgpush/config.py (for the type checker).
KEY_GROUPS = {"StrKey": ("str", False), "OptionalStrKey": ("str", True), "IntKey": ("int", False),
              "OptionalIntKey": ("int", True), "BoolKey": ("bool", False), "FloatKey": ("float", False),
              "OptionalFloatKey": ("float", True)}
PY_TYPE = {"str": "str", "choice": "str", "int": "int", "size": "int", "bool": "bool", "duration": "float"}


def test_the_typed_key_groups_of_config_match_the_option_table():
    """``cfg["pg1-path"]`` is typed ``str | None`` because the option is a string without a default: the
    Literal groups in config.py must list every option once, in the group of its type and default."""
    tree = ast.parse((PKG / "config.py").read_text())
    declared: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in KEY_GROUPS and isinstance(node.value, ast.Subscript)):
            elts = node.value.slice.elts if isinstance(node.value.slice, ast.Tuple) else [node.value.slice]
            declared[node.targets[0].id] = [e.value for e in elts if isinstance(e, ast.Constant)]
    assert set(declared) == set(KEY_GROUPS)
    where = {name: group for group, names in declared.items() for name in names}
    assert sum(map(len, declared.values())) == len(where), "an option is listed in two groups"
    expected = {o.name: next(g for g, kind in KEY_GROUPS.items() if kind == (PY_TYPE[o.type], o.default is None))
                for o in DOCUMENTED}  # repo2..4 are read through repo1's names (Config.repo)
    assert where == expected
