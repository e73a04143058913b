"""docs/design.md keeps up with the code: its module map names every tracked module, and only modules that exist;
every section the code cites exists."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.paths import REPO_ROOT

DESIGN = REPO_ROOT / "docs" / "design.md"
UNMAPPED_FOLDERS = ("tests/", "benchmarks/")
MAP_ROW = re.compile(r"^\|\s*`([^`]+\.py)`\s*\|", re.MULTILINE)
# a citation: the document's path, a comma, then 'Section' [, 'Section'] [and|to 'Section'], maybe wrapped
CITATION = re.compile(r"docs/design\.md, ((?:'[^']+'(?:, | and | to )?)+)")
CITED_FILES = ("*.py", "*.md", "*.toml", "*.sh")


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


def tracked_modules(patterns: tuple[str, ...] = ("*.py",)) -> list[str]:
    """Tracked files matching ``patterns`` (git pathspecs), relative to the repository root."""
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked modules are unknown")
    result = subprocess.run(["git", "ls-files", *patterns], cwd=REPO_ROOT, capture_output=True, encoding="utf-8",
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


def headings(text: str) -> set[str]:
    """The section titles of a Markdown text (any level)."""
    return {match.group(1).strip() for match in re.finditer(r"^#+\s+(.+)$", text, re.MULTILINE)}


def cited_sections(text: str) -> set[str]:
    """The section names cited after ``docs/design.md,`` (quoted, several joined by commas, "and" or "to")."""
    text = re.sub(r"\s+", " ", text)  # a citation may be wrapped over lines
    return {name for match in CITATION.finditer(text) for name in re.findall(r"'([^']+)'", match.group(1))}


def test_cited_sections_exist():
    sections = headings(DESIGN.read_text(encoding="utf-8"))
    missing = {}
    for path in tracked_modules(CITED_FILES):
        unknown = cited_sections((REPO_ROOT / path).read_text(encoding="utf-8")) - sections
        if unknown:
            missing[path] = sorted(unknown)
    assert not missing, f"{DESIGN} has no section of these names: {missing}"


def test_the_citation_check_reads_every_cited_name():
    text = ("(DOC, 'Masked slice') and (DOC, 'Generator' to 'Discriminators and losses')\n"
            "DOC, 'Straightened crops', 'Synthesis outputs and\n    provenance' and 'RHLV table'; "
            "(DOC,\n'RHLV') and 'not cited'; DOC alone cites nothing").replace("DOC", "docs/design.md")
    assert cited_sections(text) == {"Masked slice", "Generator", "Discriminators and losses", "Straightened crops",
                                    "Synthesis outputs and provenance", "RHLV table", "RHLV"}
    assert headings("# A\n\ntext\n### B c\n#no heading\n") == {"A", "B c"}
