"""Atomic file writes: a crash or an error never leaves a half-written output.

Temporary files are named ``.<stem>.hvtmp-<pid>-<random><suffix>`` beside their target. A process
killed with SIGKILL cannot remove its temporary; :func:`prepare_output_dir` (called by every step
before it starts writing) removes those whose process is gone and says so in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMP_TAG = "hvtmp"
_TEMP_NAME = re.compile(rf"^\..*\.{TEMP_TAG}-(?P<pid>\d+)-[A-Za-z0-9_]+")


class OutputDirError(ValueError):
    """An output folder that cannot be created or written (the message names it and the reason)."""


def temporary_owner_pid(name: str) -> int | None:
    """The process id encoded in one of our temporary file names, ``None`` for any other name."""
    match = _TEMP_NAME.match(name)
    return int(match.group("pid")) if match else None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete our temporaries in ``folder`` (and below it if ``recursive``) whose writing process is gone.

    Temporaries of live processes (another rank or worker writing right now) are kept.
    Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    candidates = folder.rglob(f".*.{TEMP_TAG}-*") if recursive else folder.glob(f".*.{TEMP_TAG}-*")
    removed = []
    for path in sorted(candidates):
        pid = temporary_owner_pid(path.name)
        if pid is None or pid == os.getpid() or _process_alive(pid) or not path.is_file():
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def prepare_output_dir(folder: str | os.PathLike, what: str = "output folder", recursive: bool = False,
                       create: bool = True) -> Path:
    """Create ``folder`` if needed, prove it writable and remove stale temporaries of killed runs.

    Call before the work starts. Raises :class:`OutputDirError` (one line naming the folder) when
    the folder cannot be created or written; prints one line to stderr when temporaries were removed.
    With ``create=False`` a missing folder is not created: its nearest existing parent must be a
    writable folder (for steps that validate more input before writing anything).
    """
    folder = Path(folder)
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        probe_dir = folder
        while not create and not probe_dir.exists() and probe_dir.parent != probe_dir:
            probe_dir = probe_dir.parent
        if not probe_dir.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(probe_dir))
        fd, probe = tempfile.mkstemp(prefix=f".probe.{TEMP_TAG}-{os.getpid()}-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputDirError(f"{folder}: {what} is not writable ({err.strerror or err})") from None
    removed = remove_stale_temporaries(folder, recursive)
    if removed:
        print(f"note: removed {len(removed)} partial file(s) left by an interrupted run in {folder} "
              f"(e.g. {removed[0].name})", file=sys.stderr)
    return folder


def _current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file keeps the final suffix (``.nii.gz``, ``.png``...) so that
    libraries choosing a format by extension write the right one. On error the
    temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    prefix = f".{path.name.split('.')[0]}.{TEMP_TAG}-{os.getpid()}-"
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; give outputs normal permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[Any]:
    """Open a temporary file for writing; it replaces ``path`` only if the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=indent)
        handle.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, raising ``ValueError`` naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file and a rename."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint", hint: str = "",
                    map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file.

    ``FileNotFoundError`` (``"<path>: <what> not found<hint>"``) for a missing file and
    ``ValueError`` for a truncated, foreign or unsafe one.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found{hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        raise ValueError(f"{path}: not a readable {what} ({type(err).__name__}: {_torch_load_gist(err)})") from err


def _torch_load_gist(err: BaseException) -> str:
    """A ``torch.load`` error on one line: its ``WeightsUnpickler error`` detail when there is one, no colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)
    return " ".join((detail.group(1) if detail else text).split())
