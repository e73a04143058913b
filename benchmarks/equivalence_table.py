"""Rows of a reference-equivalence check and their one table (shared by the two checker scripts).

A row is a dict: ``item`` (str), ``difference`` (float, or a word such as "same"), ``tolerance`` (str) and
``passed`` (bool).
"""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]


def format_difference(value: float | str) -> str:
    """A difference as the table shows it (3 significant digits; words as they are)."""
    if isinstance(value, str):
        return value
    return "0" if value == 0 else f"{value:.3g}"


def format_table(rows: list[Row]) -> str:
    """Markdown table: item | max abs difference | tolerance | verdict."""
    lines = ["| item | max abs difference | tolerance | verdict |", "| --- | ---: | --- | --- |"]
    lines += [f"| {r['item']} | {format_difference(r['difference'])} | {r['tolerance']} | "
              f"{'pass' if r['passed'] else 'FAIL'} |" for r in rows]
    return "\n".join(lines)


def report(rows: list[Row]) -> int:
    """Print the table and a one-line verdict; the exit status (1 when any row failed)."""
    print(format_table(rows))
    failed = [r["item"] for r in rows if not r["passed"]]
    print(f"{len(rows) - len(failed)} of {len(rows)} items pass" + (f"; FAILED: {'; '.join(failed)}" if failed else ""))
    return 1 if failed else 0
