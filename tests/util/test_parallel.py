"""util.parallel.map_items: input order, one error per item, serial and pool runs agree, a crashed worker."""

from __future__ import annotations

import os

import pytest

from util.parallel import map_items


def cube_unless_multiple_of_four(n: int) -> int:
    """n**3, or a ValueError naming n when n is a multiple of 4 (a 'bad item')."""
    if n % 4 == 0:
        raise ValueError(f"item {n} is a multiple of four")
    return n**3


def key_error(n: int) -> int:
    raise KeyError(n)


def exit_on_five(n: int) -> int:
    """Kills its worker process on item 5 (a crash, not an exception)."""
    if n == 5:
        os._exit(3)
    return n + 100


@pytest.mark.parametrize("workers, chunksize", [(1, 1), (2, 1), (3, 2)])
def test_values_and_errors_per_item_in_input_order(workers: int, chunksize: int) -> None:
    items = [7, 4, 1, 8, 3, 12, 5, 2]
    results = list(map_items(cube_unless_multiple_of_four, items, workers, catch=(ValueError,), chunksize=chunksize))
    assert [r.item for r in results] == items
    for result in results:
        if result.item % 4 == 0:
            assert not result.ok and result.value is None
            assert result.error == f"ValueError: item {result.item} is a multiple of four"
        else:
            assert result.ok and result.value == result.item**3 and result.error is None


def test_serial_and_pool_give_the_same_results() -> None:
    items = list(range(1, 30))
    serial = list(map_items(cube_unless_multiple_of_four, items, 1, catch=(ValueError,)))
    pooled = list(map_items(cube_unless_multiple_of_four, items, 2, catch=(ValueError,), chunksize=3))
    assert serial == pooled
    assert sum(not r.ok for r in serial) == len([n for n in items if n % 4 == 0])


@pytest.mark.parametrize("workers", [1, 2])
def test_exceptions_outside_catch_propagate(workers: int) -> None:
    with pytest.raises(KeyError):
        list(map_items(key_error, [1, 2, 3], workers, catch=(ValueError,)))


def test_nothing_caught_with_an_empty_catch() -> None:
    with pytest.raises(ValueError, match="item 4"):
        list(map_items(cube_unless_multiple_of_four, [1, 4], 1, catch=()))


def test_a_crashed_worker_fails_its_items_not_the_batch() -> None:
    items = list(range(10))
    results = list(map_items(exit_on_five, items, 2))
    assert [r.item for r in results] == items
    assert results[5].error is not None and results[5].error.startswith("BrokenProcessPool")
    assert all(r.value == r.item + 100 for r in results if r.ok)


def test_empty_and_single_item_batches() -> None:
    assert list(map_items(cube_unless_multiple_of_four, [], 4)) == []
    (only,) = map_items(cube_unless_multiple_of_four, [3], 4)
    assert only.ok and only.value == 27
