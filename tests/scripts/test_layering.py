"""The import layering of docs/design.md, 'Module map', read from every tracked module's ``import``
statements (ast): util imports only util, data only data and util, no library package imports a
step script or a benchmark, and no two packages (or modules) import each other in a cycle."""

from __future__ import annotations

import ast
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

import pytest

from tests.paths import REPO_ROOT

STEP_SCRIPTS = frozenset({"train", "demo", "predict", "eval_3d_sagittal_twostage"})
LIBRARY_PACKAGES = frozenset({"Attention", "data", "evaluation", "models", "options", "pipeline", "straighten", "util"})
MAY_IMPORT = {"util": frozenset({"util"}), "data": frozenset({"data", "util"})}
# The phantom generator takes the Genant rule and grades from evaluation (docs/design.md, 'Module map');
# that module imports nothing of the project but util, so the edge closes no cycle.
EXCEPTIONS = {"data": frozenset({"evaluation.genant"})}
UNCHECKED_FOLDERS = ("tests/",)


@dataclass(frozen=True)
class Import:
    """One ``import`` of a project module: importing file, line, imported module (dotted)."""

    path: str
    line: int
    module: str

    @property
    def target_package(self) -> str:
        return self.module.split(".")[0]

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.module}"


def package_of(path: str) -> str:
    """Top-level package of a repository path (``demo`` for ``demo.py``)."""
    return path.split("/")[0].removesuffix(".py")


def module_of(path: str) -> str:
    """Dotted module name of a repository path (``pipeline.run`` for ``pipeline/run.py``)."""
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def project_imports(path: str, source: str, modules: set[str]) -> list[Import]:
    """Every absolute import in ``source`` of one of the project's ``modules`` (dotted names), as the
    module it reaches (``from pkg.mod import name`` -> ``pkg.mod``, ``from pkg import mod`` -> ``pkg.mod``)."""
    top_level = {module.split(".")[0] for module in modules}
    found = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [Import(path, node.lineno, resolve(name, modules))
                  for name in names if name.split(".")[0] in top_level]
    return found


def resolve(name: str, modules: set[str]) -> str:
    """The longest prefix of dotted ``name`` that is a project module (``pkg.func`` -> ``pkg``)."""
    parts = name.split(".")
    for stop in range(len(parts), 0, -1):
        if ".".join(parts[:stop]) in modules:
            return ".".join(parts[:stop])
    return parts[0]


def layering_violations(imports: Iterable[Import]) -> list[str]:
    """Imports that break the rules of docs/design.md, 'Module map', each named with file and line."""
    problems = []
    for imp in imports:
        source = package_of(imp.path)
        if source not in LIBRARY_PACKAGES:
            continue
        allowed = MAY_IMPORT.get(source)
        if imp.target_package in STEP_SCRIPTS or imp.target_package == "benchmarks":
            problems.append(f"{imp}: a library package imports a step script or a benchmark")
        elif allowed is not None and imp.target_package not in allowed \
                and imp.module not in EXCEPTIONS.get(source, ()):
            problems.append(f"{imp}: {source}/ may import only {', '.join(sorted(allowed))}")
    return problems


def find_cycle(edges: dict[str, dict[str, Import]]) -> list[str] | None:
    """A cycle of the directed graph ``edges[a][b]`` (a imports b) as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for successor in sorted(edges.get(node, {})):
            if state.get(successor) == 1:
                return path[path.index(successor):] + [successor]
            if successor not in state and (cycle := visit(successor)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def describe_cycle(cycle: list[str], edges: dict[str, dict[str, Import]]) -> str:
    return "; ".join(str(edges[a][b]) for a, b in zip(cycle, cycle[1:]))


def import_graphs(imports: Iterable[Import]) -> tuple[dict, dict]:
    """(package graph, module graph), each ``{importer: {imported: first Import}}``; the package
    graph leaves out the allowed exception edges, whose targets import no project package back."""
    packages: dict[str, dict[str, Import]] = {}
    module_graph: dict[str, dict[str, Import]] = {}
    for imp in imports:
        source, target = package_of(imp.path), imp.target_package
        if source != target and imp.module not in EXCEPTIONS.get(source, ()):
            packages.setdefault(source, {}).setdefault(target, imp)
        importer, imported = module_of(imp.path), imp.module
        if importer != imported:
            module_graph.setdefault(importer, {}).setdefault(imported, imp)
    return packages, module_graph


@pytest.fixture(scope="module")
def tree_imports() -> list[Import]:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked modules are unknown")
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO_ROOT, capture_output=True, encoding="utf-8",
                            check=True)
    paths = [p for p in listed.stdout.splitlines() if p and not p.startswith(UNCHECKED_FOLDERS)
             and (REPO_ROOT / p).is_file()]
    modules = {module_of(p) for p in paths}
    return [imp for p in paths for imp in project_imports(p, (REPO_ROOT / p).read_text(encoding="utf-8"), modules)]


def test_util_and_data_import_only_the_layers_below(tree_imports) -> None:
    imports = tree_imports
    problems = layering_violations(imports)
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_no_import_cycle_between_packages_or_modules(tree_imports) -> None:
    packages, module_graph = import_graphs(tree_imports)
    for graph, kind in ((packages, "packages"), (module_graph, "modules")):
        cycle = find_cycle(graph)
        assert cycle is None, f"import cycle between {kind} {' -> '.join(cycle)}: {describe_cycle(cycle, graph)}"


def test_the_allowed_exceptions_import_no_project_package_back(tree_imports) -> None:
    imports = tree_imports
    exception_modules = {module for allowed in EXCEPTIONS.values() for module in allowed}
    back = [str(imp) for imp in imports if module_of(imp.path) in exception_modules
            and imp.target_package != "util" and imp.target_package != package_of(imp.path)]
    assert not back, "an allowed exception must stay a leaf: " + "; ".join(back)


# ----------------------------------------------------------------------------- the checker itself


def test_the_checker_names_an_upward_import_and_a_step_script_import() -> None:
    source = "import os\nfrom evaluation.rhlv import measure\nimport demo\nfrom util import fileio\n"
    modules = {"evaluation", "evaluation.rhlv", "evaluation.genant", "demo", "util", "util.fileio", "data"}
    imports = project_imports("util/x.py", source, modules)
    assert [str(i) for i in imports] == ["util/x.py:2 imports evaluation.rhlv", "util/x.py:3 imports demo",
                                         "util/x.py:4 imports util.fileio"]
    problems = layering_violations(imports)
    assert problems == ["util/x.py:2 imports evaluation.rhlv: util/ may import only util",
                        "util/x.py:3 imports demo: a library package imports a step script or a benchmark"]
    allowed = project_imports("data/p.py", "from evaluation.genant import genant_grade\n", modules)
    assert layering_violations(allowed) == []  # the one allowed exception, and only it
    other = project_imports("data/p.py", "from evaluation.rhlv import measure\n", modules)
    assert layering_violations(other) == ["data/p.py:1 imports evaluation.rhlv: data/ may import only data, util"]
    assert layering_violations(project_imports("demo.py", "from pipeline.run import QUICK\n", {"pipeline.run"})) == []


def test_the_checker_finds_a_package_cycle_through_a_type_only_import() -> None:
    sources = {"util/report.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from demo import Run\n",
               "demo.py": "from util.report import write\n", "pipeline/a.py": "from util.report import write\n"}
    modules = {module_of(p) for p in sources}
    imports = [i for p, s in sources.items() for i in project_imports(p, s, modules)]
    packages, module_graph = import_graphs(imports)
    assert find_cycle(packages) == ["demo", "util", "demo"]
    assert describe_cycle(find_cycle(packages), packages) == ("demo.py:1 imports util.report; "
                                                              "util/report.py:3 imports demo")
    assert find_cycle(module_graph) == ["demo", "util.report", "demo"]
    assert find_cycle({"a": {"b": imports[0]}, "b": {}}) is None


def test_module_names_of_paths() -> None:
    assert module_of("pipeline/run.py") == "pipeline.run" and module_of("data/__init__.py") == "data"
    assert resolve("evaluation.genant.genant_grade", {"evaluation", "evaluation.genant"}) == "evaluation.genant"
    assert resolve("pipeline.run", {"pipeline"}) == "pipeline"
