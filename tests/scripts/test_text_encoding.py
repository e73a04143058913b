"""Every text-mode file read/write and text subprocess in the tree names its encoding (UTF-8 whatever the locale)."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from tests.paths import REPO_ROOT

FILE_CALLS = {"open", "read_text", "write_text", "atomic_write", "fdopen", "NamedTemporaryFile"}
SUBPROCESS_CALLS = {"run", "Popen", "check_output", "check_call", "call"}
NOT_FILES = {"Image", "nib", "webbrowser", "tarfile", "zipfile", "h5py", "gzip"}  # receivers of unrelated .open()


def _mode(call: ast.Call, name: str) -> str | None:
    """The constant mode of a file call, or None when it is the default or not a literal."""
    method = name == "open" and isinstance(call.func, ast.Attribute)  # Path.open(mode) vs open(path, mode)
    position = 0 if method or name == "NamedTemporaryFile" else 1
    mode = call.args[position] if len(call.args) > position else None
    mode = next((k.value for k in call.keywords if k.arg == "mode"), mode)
    return mode.value if isinstance(mode, ast.Constant) and isinstance(mode.value, str) else None


def unnamed_encodings(source: str) -> Iterator[tuple[int, str]]:
    """(line, call name) of each text-mode file or subprocess call in ``source`` without ``encoding=``."""
    for call in ast.walk(ast.parse(source)):
        if not isinstance(call, ast.Call):
            continue
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if isinstance(func, ast.Attribute) and getattr(func.value, "id", None) in NOT_FILES:
            continue
        keywords = {k.arg for k in call.keywords}
        if None in keywords or "encoding" in keywords:  # **kwargs are checked where they are built
            continue
        if name in FILE_CALLS:
            mode = _mode(call, name)
            if (mode is None and name == "NamedTemporaryFile") or (mode is not None and "b" in mode):
                continue  # binary
            yield call.lineno, name
        elif name in SUBPROCESS_CALLS and keywords & {"text", "universal_newlines"}:
            yield call.lineno, f"subprocess.{name}"


def test_the_checker_sees_a_missing_encoding() -> None:
    source = ("open(p)\nopen(p, 'rb')\nPath(p).open('w')\nPath(p).open('wb')\np.read_text()\n"
              "p.write_text(s, encoding='utf-8')\natomic_write(p, 'wb')\natomic_write(p)\n"
              "subprocess.run(c, text=True)\nsubprocess.run(c, capture_output=True)\nImage.open(p)\n"
              "NamedTemporaryFile()\nNamedTemporaryFile('w')\n")
    assert list(unnamed_encodings(source)) == [(1, "open"), (3, "open"), (5, "read_text"), (8, "atomic_write"),
                                              (9, "subprocess.run"), (13, "NamedTemporaryFile")]


def test_every_text_io_in_the_tree_names_its_encoding() -> None:
    found = []
    for path in sorted(REPO_ROOT.rglob("*.py")):
        relative = path.relative_to(REPO_ROOT)
        if relative.parts[0].startswith(".") or "site-packages" in relative.parts:
            continue
        found += [f"{relative}:{line}: {name}" for line, name in unnamed_encodings(path.read_text(encoding="utf-8"))]
    assert not found, "text I/O without encoding=\"utf-8\" (the locale's encoding may be ASCII):\n" + "\n".join(found)
