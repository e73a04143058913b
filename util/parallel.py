"""One map over a batch, serial or in a process pool, with one result or one error per item.

Batch steps (phantom cohorts, straightening, RHLV tables) continue past a bad item, name it and
exit non-zero at the end (docs/design.md, 'Batch failures and exit codes'). ``map_items`` gives each
of them the same rules: results come back in input order; an exception of the ``catch`` types
raised by ``function`` becomes that item's one-line error (``"<Type>: <message>"``) and the batch
goes on; any other exception propagates, in both modes; a worker process that dies (the pool
breaks) fails the items that had not finished, each with the pool's error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Value = TypeVar("Value")


@dataclass(frozen=True)
class ItemResult(Generic[Item, Value]):
    """The outcome of one item: its ``value``, or ``error`` (a one-line message) when it failed."""

    item: Item
    value: Value | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the item succeeded."""
        return self.error is None


def error_line(err: BaseException) -> str:
    """One-line message of an exception: ``"<Type>: <message>"``."""
    return f"{type(err).__name__}: {err}"


def _call(function: Callable[[Item], Value], item: Item,
          catch: tuple[type[BaseException], ...]) -> tuple[Value | None, str | None]:
    """Run ``function(item)``; an exception of the ``catch`` types becomes the error line."""
    try:
        return function(item), None
    except catch as err:
        return None, error_line(err)


def map_items(function: Callable[[Item], Value], items: Sequence[Item], workers: int = 1, *,
              catch: tuple[type[BaseException], ...] = (Exception,),
              chunksize: int = 1) -> Iterator[ItemResult[Item, Value]]:
    """``function`` over ``items``, serially (``workers`` <= 1 or one item) or in up to ``workers`` processes.

    Yields one ``ItemResult`` per item, in input order, as soon as it and all items before it are
    done. In a pool, ``function`` and the items must be picklable (a module-level function or a
    ``functools.partial`` of one); ``chunksize`` items go to a worker at a time.
    """
    if chunksize < 1:
        raise ValueError(f"chunksize must be at least 1, got {chunksize}")
    items = list(items)
    if workers <= 1 or len(items) < 2:
        for item in items:
            value, error = _call(function, item, catch)
            yield ItemResult(item, value, error)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
        outcomes = pool.map(_call, [function] * len(items), items, [catch] * len(items), chunksize=chunksize)
        done = 0
        try:
            for value, error in outcomes:
                yield ItemResult(items[done], value, error)
                done += 1
        except BrokenProcessPool as err:
            for item in items[done:]:
                yield ItemResult(item, None, error_line(err))
