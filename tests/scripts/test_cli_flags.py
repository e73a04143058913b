"""Every step script's flags keep their names, defaults, types and choices.

``tests/scripts/cli_flags_snapshot.json`` was written from the tree before the settings refactor
(``python -m tests.scripts.test_cli_flags --write``). The test builds each script's parser the way the
script does (running it as ``__main__`` and stopping at its ``parse_args``) and compares every flag of
the snapshot with it. Flags added later are allowed; a flag that disappears or changes its default,
type, choices, number of values or action fails.
"""

from __future__ import annotations

import argparse
import json
import math
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.paths import REPO_ROOT

SNAPSHOT = Path(__file__).with_name("cli_flags_snapshot.json")

# script command lines whose parser is snapshotted; the extra words choose the model's flags (the options
# parsers read --model before building the full parser, which needs the required --dataroot)
COMMANDS = [
    "train.py --dataroot .", "train.py --dataroot . --model aotgan", "eval_3d_sagittal_twostage.py --dataroot .",
    "predict.py", "demo.py",
    "data/make_phantoms.py", "data/import_verse.py",
    "straighten/location_json_local.py", "straighten/straighten_mask_3d.py", "straighten/import_reference_crops.py",
    "Attention/train_classifier.py", "Attention/grad_CAM_3d_sagittal.py", "Attention/train_grader3d.py",
    "models/import_reference_weights.py",
    "evaluation/RHLV_quantification.py", "evaluation/SVM_grading.py", "evaluation/grade.py",
    "evaluation/generation_eval_sagittal.py", "evaluation/generation_eval_coronal.py",
    "evaluation/compare_methods.py",
]


class _ParserReached(BaseException):
    """Raised in place of parsing, carrying the script's finished parser."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


def _plain(value: Any) -> Any:
    """A JSON-comparable form of a default value (inf as a string, tuples as lists, paths as text)."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def describe_action(action: argparse.Action) -> dict[str, Any]:
    """The user-visible contract of one flag."""
    kind = action.type
    return {
        "dest": action.dest,
        "default": _plain(action.default),
        "type": None if kind is None else getattr(kind, "__name__", repr(kind)),
        "choices": None if action.choices is None else [_plain(c) for c in action.choices],
        "nargs": action.nargs,
        "action": type(action).__name__,
        "required": bool(action.required),
    }


def script_parser(command: str) -> argparse.ArgumentParser:
    """The parser the script ``command`` builds (run as ``__main__`` up to its ``parse_args``)."""
    script, *extra = command.split()
    saved_argv, saved_parse = sys.argv, argparse.ArgumentParser.parse_args

    def reached(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _ParserReached(self)

    sys.argv = [str(REPO_ROOT / script), *extra]
    argparse.ArgumentParser.parse_args = reached  # type: ignore[method-assign]
    try:
        runpy.run_path(str(REPO_ROOT / script), run_name="__main__")
    except _ParserReached as reached_parser:
        return reached_parser.parser
    finally:
        sys.argv = saved_argv
        argparse.ArgumentParser.parse_args = saved_parse  # type: ignore[method-assign]
    raise AssertionError(f"{script}: finished without calling parse_args")


def flags_of(command: str) -> dict[str, dict[str, Any]]:
    """``{flag: contract}`` for every flag of the script (``-h/--help`` left out)."""
    flags = {}
    for action in script_parser(command)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = max(action.option_strings, key=len) if action.option_strings else action.dest
        flags[name] = describe_action(action)
    return flags


def snapshot() -> dict[str, dict[str, dict[str, Any]]]:
    return {command: flags_of(command) for command in COMMANDS}


@pytest.mark.parametrize("command", COMMANDS)
def test_flags_match_snapshot(command: str) -> None:
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))[command]
    actual = flags_of(command)
    missing = sorted(set(expected) - set(actual))
    assert not missing, f"{command}: flags removed: {missing}"
    changed = {flag: (expected[flag], actual[flag]) for flag in expected if expected[flag] != actual[flag]}
    assert not changed, f"{command}: flags changed (snapshot, now): {changed}"


def test_snapshot_sees_defaults_of_known_flags() -> None:
    """The harness reads the parser the script really builds (spot checks of published defaults)."""
    train = flags_of("train.py --dataroot .")
    assert train["--mask_height"]["default"] == 40.0 and train["--mask_height"]["type"] == "float"
    assert train["--lr"]["default"] == 2e-4
    rhlv = flags_of("evaluation/RHLV_quantification.py")
    assert rhlv["--height_threshold"]["default"] == 0.7


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python -m tests.scripts.test_cli_flags --write  (rewrites the snapshot)")
    SNAPSHOT.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {SNAPSHOT}")
