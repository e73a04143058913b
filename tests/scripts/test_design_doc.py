"""docs/design.md keeps up with the code: its module map names every tracked module, and only modules that exist."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.paths import REPO_ROOT

DESIGN = REPO_ROOT / "docs" / "design.md"
UNMAPPED_FOLDERS = ("tests/", "benchmarks/")
MAP_ROW = re.compile(r"^\|\s*`([^`]+\.py)`\s*\|", re.MULTILINE)


def module_map_section(text: str) -> str:
    """The text of the ``## Module map`` section (up to the next level-2 heading)."""
    match = re.search(r"^## Module map\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    if match is None:
        raise AssertionError(f"{DESIGN}: no '## Module map' section")
    return match.group(1)


def mapped_modules(text: str) -> set[str]:
    """Module paths of the module map's table rows (``| `path.py` | idea |``)."""
    return set(MAP_ROW.findall(module_map_section(text)))


def unmapped_modules(modules: list[str], text: str) -> list[str]:
    """Modules outside tests/ and benchmarks/ that have no row in the module map."""
    mapped = mapped_modules(text)
    return [module for module in modules if not module.startswith(UNMAPPED_FOLDERS) and module not in mapped]


def tracked_modules() -> list[str]:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked modules are unknown")
    result = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO_ROOT, capture_output=True, encoding="utf-8",
                            check=True)
    return [line for line in result.stdout.splitlines() if line]


def test_every_tracked_module_is_in_the_module_map():
    missing = unmapped_modules(tracked_modules(), DESIGN.read_text(encoding="utf-8"))
    assert not missing, f"{DESIGN}: add these modules to the module map: {', '.join(missing)}"


def test_module_map_names_only_existing_modules():
    mapped = mapped_modules(DESIGN.read_text(encoding="utf-8"))
    stale = sorted(path for path in mapped if not (REPO_ROOT / path).is_file())
    assert not stale, f"{DESIGN}: the module map names modules that do not exist: {', '.join(stale)}"


def test_the_check_sees_a_module_named_outside_the_map():
    text = ("# Design\n\nSee `pkg/b.py` in the prose.\n\n## Module map\n\n| module | idea |\n| --- | --- |\n"
            "| `pkg/a.py` | one idea |\n\n## After\n\n| `pkg/c.py` | not in the map |\n")
    modules = ["pkg/a.py", "pkg/b.py", "pkg/c.py", "tests/test_a.py", "benchmarks/bench_a.py"]
    assert unmapped_modules(modules, text) == ["pkg/b.py", "pkg/c.py"]
