"""Interleaved micro-timing the verifier benchmarks share. Not a benchmark itself."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def interleaved(methods: Mapping[K, Callable[[], object]], rounds: int, per_round: int) -> dict[K, list[float]]:
    """Seconds per call of each method, one figure per round; in each round every method runs once
    to warm, then ``per_round`` times, in the same order (so drift on a noisy VM hits all alike)."""
    times: dict[K, list[float]] = {k: [] for k in methods}
    for _ in range(rounds):
        for key, run in methods.items():
            run()  # warm
            start = time.perf_counter()
            for _ in range(per_round):
                run()
            times[key].append((time.perf_counter() - start) / per_round)
    return times
