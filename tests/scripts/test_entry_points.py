"""The installable package: every step script is a console command that runs the script's own parser, the
install list matches the package's dependencies, and no module edits ``sys.path``."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import runpy
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT
from tests.scripts.test_design_doc import tracked_modules

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
ENTRY_POINTS: dict[str, str] = PYPROJECT["project"]["scripts"]
SCRIPT_FOLDERS_WITHOUT_ENTRY_POINTS = ("tests/", "benchmarks/")
SYS_PATH_TEXT = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend)\s*\(|\+?=|\[)")
NOT_INSTALLED = "the project is not installed in this environment: run `pip install -r requirements.txt`"


def script_of(target: str) -> str:
    """``package.module:function`` -> the script's path relative to the repository root."""
    return target.split(":")[0].replace(".", "/") + ".py"


def entry_point_main(target: str):
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def help_text(run, prog: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    """What ``run()`` prints for ``--help`` with ``sys.argv[0] == prog``; fails unless it exits 0."""
    monkeypatch.setattr(sys, "argv", [prog, "--help"])
    with pytest.raises(SystemExit) as stopped:
        run()
    assert stopped.value.code in (0, None), f"{prog} --help exited {stopped.value.code}"
    return capsys.readouterr().out


def is_sys_path(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys"


def sys_path_edits(source: str) -> list[int]:
    """Line numbers where ``source`` changes ``sys.path``: calls, assignments and code in string literals."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in ("insert", "append", "extend", "remove", "clear"):
            if is_sys_path(node.value):
                lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(is_sys_path(t.value if isinstance(t, ast.Subscript) else t) for t in targets):
                lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SYS_PATH_TEXT.search(node.value):
            lines.append(node.lineno)  # e.g. code handed to ``python -c``
    return sorted(lines)


def test_every_step_script_is_an_entry_point():
    scripts = {path for path in tracked_modules() if not path.startswith(SCRIPT_FOLDERS_WITHOUT_ENTRY_POINTS)
               and 'if __name__ == "__main__":' in (REPO_ROOT / path).read_text(encoding="utf-8")}
    targets = {script_of(target) for target in ENTRY_POINTS.values()}
    assert scripts - targets == set(), f"step scripts without a [project.scripts] entry: {sorted(scripts - targets)}"
    assert targets - scripts == set(), f"entry points that are not step scripts: {sorted(targets - scripts)}"
    assert all(name.startswith("healthivert-") for name in ENTRY_POINTS)


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_point_prints_its_scripts_own_help(name: str, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]):
    main = entry_point_main(ENTRY_POINTS[name])
    script = REPO_ROOT / script_of(ENTRY_POINTS[name])
    # ``python <script>`` (run_path sets sys.argv[0] to the script, so the entry point gets the same program name)
    via_script = help_text(lambda: runpy.run_path(str(script), run_name="__main__"), str(script), monkeypatch, capsys)
    via_entry_point = help_text(lambda: sys.exit(main()), str(script), monkeypatch, capsys)
    assert via_entry_point.startswith(f"usage: {script.name} ")
    assert "--help" in via_entry_point
    assert via_entry_point == via_script, f"{name} prints other help than python {script_of(ENTRY_POINTS[name])}"


def test_entry_points_print_different_help(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    texts = {}
    for name, target in ENTRY_POINTS.items():
        main = entry_point_main(target)
        texts[name] = help_text(lambda main=main: sys.exit(main()), "prog", monkeypatch, capsys)
    same = [(a, b) for a in texts for b in texts if a < b and texts[a] == texts[b]]
    assert not same, f"entry points sharing one parser: {same}"


def test_console_command_runs_a_step_from_another_folder(tmp_path: Path):
    command = Path(sysconfig.get_path("scripts")) / "healthivert-make-phantoms"
    if not command.is_file():
        pytest.fail(f"{command} is missing: {NOT_INSTALLED}")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([str(command), "--out", "cohort", "--cases", "1", "--vertebrae", "L2-L4",
                           "--spacing", "2", "2", "2", "--orientation", "RAS", "--no_progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8", check=False)
    assert done.returncode == 0, done.stderr
    truth = json.loads((tmp_path / "cohort/raw/ph000/ph000_truth.json").read_text(encoding="utf-8"))
    assert [v["name"] for v in truth["vertebrae"]] == ["L2", "L3", "L4"]
    assert truth["orientation"] == "RAS" and truth["spacing_mm"] == [2.0, 2.0, 2.0]


def test_script_in_a_package_folder_runs_from_another_folder(tmp_path: Path):
    """``python evaluation/grade.py`` imports its package by name; only the installed package makes that work."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "evaluation" / "grade.py"), "--help"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, encoding="utf-8", check=False)
    assert done.returncode == 0, f"{done.stderr}\n{NOT_INSTALLED}"
    assert done.stdout.startswith("usage: grade.py ") and "--grader" in done.stdout


def test_readme_lists_every_entry_point_with_its_script():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"`(healthivert-[a-z0-9-]+)` \| `([^`]+\.py)`", readme))
    assert listed == {name: script_of(target) for name, target in ENTRY_POINTS.items()}


def test_requirements_install_the_package_and_its_dependencies():
    lines = [line.split("#")[0].strip() for line in (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8")
             .splitlines()]
    lines = [line for line in lines if line]
    assert "-e ." in lines
    project = PYPROJECT["project"]
    assert sorted(line for line in lines if line != "-e .") == sorted(
        project["dependencies"] + project["optional-dependencies"]["dev"])
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"


def test_no_module_edits_sys_path():
    edits = {path: lines for path in tracked_modules()
             if (lines := sys_path_edits((REPO_ROOT / path).read_text(encoding="utf-8")))}
    assert not edits, f"sys.path edits (the package is installed; import by package name): {edits}"


def test_the_sys_path_check_sees_each_kind_of_edit():
    source = ("import sys\nprint(SYS.path)\nSYS.path.insert(0, 'x')\nSYS.path.append('y')\nSYS.path += ['z']\n"
              "SYS.path[:0] = ['w']\nSYS.path = []\nCHILD = 'import sys; SYS.path.insert(0, \"r\")'\n")
    assert sys_path_edits(source.replace("SYS", "sys")) == [3, 4, 5, 6, 7, 8]  # spelt so this file passes the scan
