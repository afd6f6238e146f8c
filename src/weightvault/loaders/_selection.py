"""Planning a basic-indexing slice of a row-major tensor: which bytes it touches.

``plan_selection(shape, itemsize, index)`` turns an index (ints, slices with a
positive step, one Ellipsis) into the smallest byte range that covers every
selected element, plus the sizes and element strides that pick the selection
out of that range. Loaders decrypt only the chunks under the range.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import EllipsisType
from typing import TypeAlias

__all__ = ["Index", "Selection", "plan_selection"]

Index: TypeAlias = int | slice | EllipsisType | tuple[int | slice | EllipsisType, ...]


@dataclass(frozen=True, slots=True)
class Selection:
    """Bytes [start, stop) of the tensor hold the selection, laid out by sizes and strides."""

    start: int
    stop: int
    sizes: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def empty(self) -> bool:
        return self.start == self.stop


def _row_major_strides(shape: tuple[int, ...]) -> list[int]:
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * shape[i + 1]
    return strides


def _expand(index: Index, rank: int) -> list[int | slice]:
    items = list(index) if isinstance(index, tuple) else [index]
    ellipses = [i for i, item in enumerate(items) if item is Ellipsis]
    if len(ellipses) > 1:
        raise IndexError("an index can only have a single ellipsis")
    concrete = [item for item in items if item is not Ellipsis]
    for item in concrete:
        if isinstance(item, bool) or not isinstance(item, int | slice):
            raise TypeError("only integers, slices and one Ellipsis are supported")
    if len(concrete) > rank:
        raise IndexError(f"too many indices for a tensor of rank {rank}")
    fill: list[int | slice] = [slice(None)] * (rank - len(concrete))
    if ellipses:
        at = ellipses[0]
        before = [i for i in items[:at] if i is not Ellipsis]
        after = [i for i in items[at + 1 :] if i is not Ellipsis]
        return [*before, *fill, *after]
    return [*concrete, *fill]


def plan_selection(shape: tuple[int, ...], itemsize: int, index: Index) -> Selection:
    """Plan a selection; raises IndexError or TypeError like numpy would."""
    expanded = _expand(index, len(shape))
    strides = _row_major_strides(shape)
    base = 0
    last = 0
    sizes: list[int] = []
    out_strides: list[int] = []
    for dim, stride, item in zip(shape, strides, expanded, strict=True):
        if isinstance(item, int):
            k = item + dim if item < 0 else item
            if not 0 <= k < dim:
                raise IndexError(f"index {item} is out of bounds for dimension of size {dim}")
            base += k * stride
            last += k * stride
            continue
        start, stop, step = item.indices(dim)
        if step <= 0:
            raise IndexError("only positive slice steps are supported")
        length = len(range(start, stop, step))
        sizes.append(length)
        out_strides.append(step * stride)
        if length:
            base += start * stride
            last += (start + step * (length - 1)) * stride
    if any(s == 0 for s in sizes) or 0 in shape:
        return Selection(0, 0, tuple(sizes), tuple(out_strides))
    return Selection(base * itemsize, (last + 1) * itemsize, tuple(sizes), tuple(out_strides))
