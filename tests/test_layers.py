"""The package's layers: imports point one way, each library in its room, privates stay home.

The source is read with ``ast`` (function-level imports included, nothing is imported):

    cli  ->  report  ->  study | experiments  ->  storage  ->  maths  ->  _kernels, errors

A module may import its own layer or any layer below; ``study`` and ``experiments`` do not
import each other. ``click`` lives only in ``cli/``, ``matplotlib`` only in ``report/``; the
maths and the kernels import nothing but the standard library, torch, numpy, scipy and
scikit-learn (numba in ``_kernels/`` only). No module imports a ``_private`` name of another.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "iht"

#: Rank of each layer: an import may only go to the same rank or below.
RANKS = {
    "errors": 0,
    "_kernels": 0,
    "maths": 1,
    "storage": 2,
    "study": 3,
    "experiments": 3,
    "report": 4,
    "cli": 5,
}
PACKAGES = ("_kernels", "storage", "study", "experiments", "report", "cli")
#: The maths may use these (and data packages that generate data offline).
MATHS_LIBRARIES = {"torch", "numpy", "scipy", "sklearn", "mnist1d"}
KERNEL_LIBRARIES = MATHS_LIBRARIES | {"numba", "llvmlite"}
#: What ``import iht`` and ``iht --help`` must not load.
HEAVY = ("numba", "pandas", "pyarrow", "matplotlib", "scipy", "sklearn", "ray")


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name, e.g. "iht.study.store"
    target: str  # the iht module imported, or the top-level name of a library
    names: tuple[str, ...]  # the names taken with "from X import a, b"
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "maths"  # the package's __init__: the public API of the maths
    if parts[1] in PACKAGES:
        return parts[1]
    return "errors" if parts[1] == "errors" else "maths"


def imports(module: str, path: Path, known: set[str]) -> Iterator[Import]:
    """Every import in the file, at any depth, with relative names resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, _iht_module(alias.name, known), (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            names = tuple(alias.name for alias in node.names)
            submodules = [f"{source}.{n}" for n in names if f"{source}.{n}" in known]
            if submodules:  # "from . import x" imports the module x
                for sub in submodules:
                    yield Import(module, sub, (), node.lineno)
            else:
                yield Import(module, _iht_module(source, known), names, node.lineno)


def _iht_module(name: str, known: set[str]) -> str:
    """The iht module a dotted name refers to, or the top-level library name."""
    if not name.startswith("iht"):
        return name.split(".")[0]
    while name not in known and "." in name:
        name = name.rpartition(".")[0]
    return name


def all_imports() -> list[Import]:
    found = modules()
    known = set(found)
    return [imp for name, path in found.items() for imp in imports(name, path, known)]


def is_iht(target: str) -> bool:
    return target == "iht" or target.startswith("iht.")


def test_the_walk_sees_the_layers() -> None:
    """The test itself is not vacuous: it finds the modules and the edges it checks."""
    found = modules()
    assert {"iht.threshold", "iht.study.store", "iht.report.study", "iht.cli.main"} <= set(found)
    edges = {(i.importer, i.target) for i in all_imports() if is_iht(i.target)}
    assert ("iht.cli.main", "iht.cli.reproduce") in edges
    assert ("iht.threshold", "iht._kernels.iht_step") in edges  # a function-level import
    assert {layer(m) for m in found} == set(RANKS)


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for imp in all_imports():
        if not is_iht(imp.target) or imp.target == imp.importer:
            continue
        a, b = layer(imp.importer), layer(imp.target)
        if RANKS[a] < RANKS[b] or (RANKS[a] == RANKS[b] and a != b and a in PACKAGES):
            wrong.append(f"{imp.importer}:{imp.line} ({a}) imports {imp.target} ({b})")
    assert wrong == []


def test_no_import_cycle() -> None:
    graph: dict[str, set[str]] = {name: set() for name in modules()}
    for imp in all_imports():
        if is_iht(imp.target) and imp.target != imp.importer:
            graph[imp.importer].add(imp.target)
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.parametrize(("library", "home"), [("click", "cli"), ("matplotlib", "report")])
def test_libraries_stay_in_their_room(library: str, home: str) -> None:
    outside = [
        f"{i.importer}:{i.line}"
        for i in all_imports()
        if i.target == library and layer(i.importer) != home
    ]
    assert outside == []


def test_the_maths_imports_only_numerical_libraries() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    wrong = []
    for imp in all_imports():
        where = layer(imp.importer)
        if where not in ("maths", "_kernels", "errors") or is_iht(imp.target):
            continue
        allowed = KERNEL_LIBRARIES if where == "_kernels" else MATHS_LIBRARIES
        if where == "errors":
            allowed = set()
        if imp.target not in stdlib | allowed:
            wrong.append(f"{imp.importer}:{imp.line} imports {imp.target}")
    assert wrong == []


def test_no_private_name_is_imported_from_another_module() -> None:
    wrong = [
        f"{i.importer}:{i.line} imports {name} from {i.target}"
        for i in all_imports()
        if is_iht(i.target) and i.target != i.importer
        for name in i.names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert wrong == []


def _loaded_after(code: str) -> list[str]:
    """Which of HEAVY (and click) a fresh interpreter has loaded after running ``code``."""
    probe = (
        f"{code}\nimport sys\nprint(' '.join(m for m in {(*HEAVY, 'click')!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def test_import_iht_is_light() -> None:
    assert _loaded_after("import iht") == []


@pytest.mark.parametrize("command", [[], ["reproduce"], ["train"], ["compare"], ["oracle"]])
def test_help_loads_no_command_dependencies(command: list[str]) -> None:
    code = (
        "import contextlib, io\nfrom iht.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n    assert main({[*command, '--help']!r}) == 0"
    )
    assert _loaded_after(code) == ["click"]
