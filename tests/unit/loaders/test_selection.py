"""Slice planning agrees with NumPy's basic indexing and touches only the bytes it needs."""

from __future__ import annotations

import numpy as np
import pytest

from weightvault.loaders._selection import plan_selection


@pytest.mark.parametrize(
    "index",
    [
        (slice(2, 5),),
        (slice(None), slice(1, 3)),
        (1,),
        (-1, slice(None, None, 2)),
        (Ellipsis, 0),
        (slice(0, 0),),
        (slice(1, 6, 3), 2, slice(None)),
        (),
    ],
)
def test_plan_matches_numpy(index: tuple[object, ...]) -> None:
    """Picking the planned range with the planned strides gives NumPy's result."""
    shape = (6, 4, 3)
    arr = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    plan = plan_selection(shape, 4, index)  # type: ignore[arg-type]
    expected = arr[index]  # type: ignore[index]
    if plan.empty:
        assert 0 == expected.size
        return
    raw = arr.tobytes()[plan.start : plan.stop]
    flat = np.frombuffer(raw, dtype=np.int32)
    picked = np.lib.stride_tricks.as_strided(flat, plan.sizes, tuple(s * 4 for s in plan.strides))
    np.testing.assert_array_equal(expected, picked)


def test_row_slice_touches_only_its_rows() -> None:
    """Selecting rows 10..20 of a (100, 8) float32 tensor covers exactly those rows' bytes."""
    plan = plan_selection((100, 8), 4, (slice(10, 20),))
    assert (10 * 32, 20 * 32) == (plan.start, plan.stop)


@pytest.mark.parametrize("index", [(slice(None, None, -1),), (None,), ([0, 1],), (0, 0, 0, 0), (10,), (True,)])
def test_unsupported_or_out_of_range_indices(index: tuple[object, ...]) -> None:
    """Negative steps, newaxis, advanced indexing, too many indices and out-of-range ints raise."""
    with pytest.raises((IndexError, TypeError)):
        plan_selection((6, 4, 3), 4, index)  # type: ignore[arg-type]
