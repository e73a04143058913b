"""Command-line helpers shared by the step scripts."""

from __future__ import annotations

import argparse
import sys


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
