"""Command-line helpers shared by the step scripts."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_option(parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """``parser.add_argument(flag, ...)`` unless ``flag`` is already defined (the first definition wins).

    The option parsers of train.py and the synthesis scripts add the model's and the dataset's flags in
    turn; a flag both need is defined once, by a shared function, and added by whichever comes first.
    """
    if flag not in parser._option_string_actions:
        parser.add_argument(flag, **kwargs)


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends each real default to its flag's help.

    Flags whose default is None or False (optional inputs, switches) or whose help
    already says its default are left as written.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def tolerate_unencodable_stdout() -> None:
    """Print what the locale cannot encode (an ASCII locale and "±", "—") as backslash escapes instead of failing.

    Files are always written as UTF-8; only the copy printed to the terminal is affected.
    """
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
