"""Every step script of the tree answers ``--help`` with a usage that names each of its flags and its real
defaults (scripts are found in the tree, not listed; each runs in this interpreter as ``python <script>``)."""

from __future__ import annotations

import argparse
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT
from util.cli import DefaultsHelpFormatter

MAIN_GUARD = 'if __name__ == "__main__":'


def step_scripts() -> list[str]:
    """Tracked scripts (outside tests/) that run as ``python <script>``."""
    try:
        listed = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO_ROOT, capture_output=True, encoding="utf-8",
                                check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = [str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.rglob("*.py") if ".venv" not in p.parts]
    return sorted(path for path in listed if not path.startswith("tests/")
                  and MAIN_GUARD in (REPO_ROOT / path).read_text(encoding="utf-8"))


def shown_default(action: argparse.Action) -> str | None:
    """The ``(default: ...)`` text a flag's help must carry (None when its help need not show one)."""
    text = action.help or ""
    if action.help == argparse.SUPPRESS or "%(default)" in text or action.default in (None, False, argparse.SUPPRESS):
        return None
    if "default" in text.lower():  # the help states the default in its own words
        return None
    return f"(default: {action.default})"


def help_of(script: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
            ) -> tuple[str, argparse.ArgumentParser]:
    """Run ``python <script> --help`` in-process; its printed help and the parser that printed it."""
    printed: list[argparse.ArgumentParser] = []
    print_help = argparse.ArgumentParser.print_help

    def recording_print_help(self: argparse.ArgumentParser, file=None) -> None:
        printed.append(self)
        print_help(self, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", recording_print_help)
    monkeypatch.setattr(sys, "argv", [str(REPO_ROOT / script), "--help"])
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO_ROOT / script), run_name="__main__")
    assert done.value.code in (0, None), f"{script} --help exited {done.value.code}"
    assert len(printed) == 1, f"{script} --help printed {len(printed)} usages"
    return capsys.readouterr().out, printed[0]


def test_scripts_are_found_in_the_tree() -> None:
    scripts = step_scripts()
    for expected in ("train.py", "demo.py", "evaluation/SVM_grading.py", "straighten/straighten_mask_3d.py"):
        assert expected in scripts  # the finder sees the steps of the README's quick start
    assert not [s for s in scripts if s.startswith("tests/")]


@pytest.mark.parametrize("script", step_scripts())
def test_help_names_every_flag_and_its_default(script: str, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    text, parser = help_of(script, monkeypatch, capsys)
    flat = " ".join(text.split())
    assert flat.startswith(f"usage: {Path(script).name} "), flat[:120]
    flags = [action for action in parser._actions if action.option_strings and action.help != argparse.SUPPRESS]
    assert len(flags) > 1, f"{script}: --help is its only flag"
    undocumented = [action.option_strings[-1] for action in flags if not (action.help or "").strip()]
    assert not undocumented, f"{script}: flags without help: {undocumented}"
    for action in flags:
        words = " ".join(action.help.split()[:3]).split("%(")[0].strip()
        assert f"{action.option_strings[-1]}" in text and words in flat, f"{script}: {action.option_strings[-1]}"
    if issubclass(parser.formatter_class, (DefaultsHelpFormatter, argparse.ArgumentDefaultsHelpFormatter)):
        for action in flags:
            default = shown_default(action)
            if default is not None:
                assert " ".join(default.split()) in flat, f"{script}: {action.option_strings[-1]} lacks {default}"
