"""The import graph follows the layers (docs/architecture.md): cli -> commands -> archive -> (repo, pg) -> storage,
everybody may use the kernel, and the kernel imports nothing above it.

Why a test and not a convention: the hot path (one process per WAL segment) stays stdlib-only only while the
kernel and ``archive/foreground.py`` import nothing that pulls in paramiko or psycopg, and a layer that reaches up
(storage importing a command, repo importing the CLI) is how a 40 ms start-up becomes 400 ms and how import cycles
appear. Every ``import`` in every module under ``pgpush/`` counts, at module level or inside a function (a lazy
import is still a dependency), typing-only ones included; only module-level runtime imports count for cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

PKG = Path(__file__).resolve().parents[2] / "pgpush"

KERNEL = frozenset({"pgpush", "pgpush.errors", "pgpush.log", "pgpush.options", "pgpush.config", "pgpush.config_repos", "pgpush.wal",
                    "pgpush.fsutil", "pgpush.safepath"})
# The one guarded entry: it resolves the options with the kernel and hands over, lazily, to the archive
# fast paths or to the CLI. It may reach every layer; nothing may import it.
ENTRY = "pgpush.__main__"
PACKAGES = {"pgpush.storage": "storage", "pgpush.repo": "repo", "pgpush.pg": "pg", "pgpush.archive": "archive",
            "pgpush.commands": "commands", "pgpush.cli": "cli"}
_BELOW_ARCHIVE = {"kernel", "storage", "repo", "pg"}
MAY_IMPORT: dict[str, frozenset[str]] = {
    "kernel": frozenset({"kernel"}),
    "storage": frozenset({"kernel", "storage"}),
    "repo": frozenset({"kernel", "storage", "repo"}),
    "pg": frozenset({"kernel", "pg"}),
    "archive": frozenset(_BELOW_ARCHIVE | {"archive"}),
    "commands": frozenset(_BELOW_ARCHIVE | {"archive", "commands"}),
    "cli": frozenset(_BELOW_ARCHIVE | {"archive", "commands", "cli"}),
    "entry": frozenset(_BELOW_ARCHIVE | {"archive", "commands", "cli"}),
}


class Edge(NamedTuple):
    source: str
    target: str
    path: str
    line: int
    module_level: bool  # executed when the module is imported (not in a function, not under TYPE_CHECKING)

    def __str__(self) -> str:
        where = "module level" if self.module_level else "in a function"
        return f"{self.path}:{self.line}: {self.source} -> {self.target} ({where})"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = PKG) -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(root, p): p for p in sorted(root.rglob("*.py"))}


def _resolve(base: str, names: list[str], known: set[str]) -> list[str]:
    """``from base import a, b``: a name that is a module is an edge to that module, else to ``base``."""
    return [f"{base}.{n}" if f"{base}.{n}" in known else base for n in names]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(root: Path = PKG) -> list[Edge]:
    """Every edge from a module of the package to a module of the package."""
    mods = modules(root)
    known = set(mods)
    top = root.name
    edges: list[Edge] = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        shown = str(path.relative_to(root.parent))

        def visit(node: ast.AST, module_level: bool, name: str = name, package: str = package,
                  shown: str = shown) -> None:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = _resolve(base, [a.name for a in node.names], known)
            elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)
                  and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                       or (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module")))):
                targets = [node.args[0].value]
            for target in dict.fromkeys(targets):  # `from x import a, b` is one edge
                if target == top or target.startswith(top + "."):
                    edges.append(Edge(name, target, shown, getattr(node, "lineno", 0), module_level))
            for child in ast.iter_child_nodes(node):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    visit(child, False)
                elif isinstance(node, ast.If) and _is_type_checking(node.test) and any(child is b for b in node.body):
                    visit(child, False)
                else:
                    visit(child, module_level)

        visit(ast.parse(path.read_text(), filename=str(path)), True)
    return edges


def layer_of(module: str) -> str | None:
    if module == ENTRY:
        return "entry"
    if module in KERNEL:
        return "kernel"
    for package, layer in PACKAGES.items():
        if module == package or module.startswith(package + "."):
            return layer
    return None


def layer_violations(edges: list[Edge], all_modules: list[str]) -> list[str]:
    problems = [f"{m}: in no layer; add it to KERNEL or PACKAGES in {Path(__file__).name}"
                for m in all_modules if layer_of(m) is None]
    for e in edges:
        source, target = layer_of(e.source), layer_of(e.target)
        if source is None or target is None:
            if target is None and e.target not in all_modules:
                problems.append(f"{e}: imports a module that does not exist")
            continue
        if target == "entry":
            problems.append(f"{e}: nothing may import the guarded entry {ENTRY}")
        elif target not in MAY_IMPORT[source]:
            problems.append(f"{e}: layer {source} may import only {', '.join(sorted(MAY_IMPORT[source]))}, "
                            f"not {target}")
    return problems


def cycles(edges: list[Edge]) -> list[list[Edge]]:
    """Import cycles among module-level imports (Tarjan's strongly connected components)."""
    graph: dict[str, list[Edge]] = {}
    for e in edges:
        if e.module_level and e.source != e.target:
            graph.setdefault(e.source, []).append(e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[Edge]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in graph.get(v, []):
            if e.target not in index:
                strong(e.target)
                low[v] = min(low[v], low[e.target])
            elif e.target in on_stack:
                low[v] = min(low[v], index[e.target])
        if low[v] == index[v]:
            members = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                members.add(w)
                if w == v:
                    break
            if len(members) > 1:
                found.append([e for m in sorted(members) for e in graph.get(m, []) if e.target in members])

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_every_import_respects_the_layers():
    problems = layer_violations(imports(), list(modules()))
    assert not problems, "import(s) across the layers (docs/architecture.md):\n" + "\n".join(problems)


def test_no_import_cycle_at_module_level():
    found = cycles(imports())
    text = "\n\n".join("\n".join(str(e) for e in cycle) for cycle in found)
    assert not found, f"module-level import cycle(s); make one edge lazy or move the shared code down:\n{text}"


def test_the_entry_reaches_archive_and_cli_only_lazily():
    """``__main__`` imports the kernel at most at module level: the hot path must not pay for the rest."""
    late = [str(e) for e in imports() if e.source == ENTRY and e.module_level and layer_of(e.target) != "kernel"]
    assert not late, "the guarded entry imports above the kernel at module level:\n" + "\n".join(late)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pgpush"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_checker_sees_bad_edges_of_every_form(tmp_path):
    """The rule can fail: an upward import in each spelling (plain, from, relative, lazy) is reported."""
    root = _tree(tmp_path, {
        "__init__.py": "", "errors.py": "def f():\n    from pgpush.cli import app\n",
        "storage/__init__.py": "", "storage/base.py": "from ..repo import catalog\n",
        "repo/__init__.py": "", "repo/catalog.py": "import pgpush.commands.backup\n",
        "pg/__init__.py": "", "pg/pgconn.py": "from pgpush.storage import base\nfrom pgpush import __main__\n",
        "commands/__init__.py": "", "commands/backup.py": "", "cli/__init__.py": "", "cli/app.py": "",
        "__main__.py": "", "stray.py": "",
    })
    found = "\n".join(layer_violations(imports(root), list(modules(root))))
    assert "pgpush/errors.py:2: pgpush.errors -> pgpush.cli.app (in a function): layer kernel" in found
    assert "pgpush/storage/base.py:1: pgpush.storage.base -> pgpush.repo.catalog (module level): layer storage" in found
    assert "pgpush.repo.catalog -> pgpush.commands.backup" in found
    assert "pgpush.pg.pgconn -> pgpush.storage.base" in found
    assert "nothing may import the guarded entry" in found
    assert "pgpush.stray: in no layer" in found


def test_the_checker_sees_a_cycle_but_not_a_lazy_one(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "", "a.py": "from pgpush import b\n", "b.py": "import pgpush.a\n",
        "c.py": "from pgpush import d\n", "d.py": "def f():\n    from pgpush import c\n",
        "e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pgpush import f\n",
        "f.py": "from pgpush import e\n",
    })
    found = cycles(imports(root))
    assert [sorted({e.source for e in cycle}) for cycle in found] == [["pgpush.a", "pgpush.b"]]
