"""How many threads decrypt or encrypt: one per usable core by default.

pyca/cryptography releases the GIL inside its AEAD calls (upstream PR 15359; our pin's
floor, 50.0.2, is the version we measured, and ``tests/unit/crypto/test_gil.py`` fails
if a later one stops), so threads scale with cores for the work that dominates loading
and sealing.
"""

from __future__ import annotations

import os
import warnings

__all__ = ["resolve_workers", "usable_cpus"]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | None) -> int:
    """``workers`` checked: None means one per usable core; more than that is capped with a warning.

    Raises:
        TypeError: not an integer.
        ValueError: zero or negative.
    """
    usable = usable_cpus()
    if workers is None:
        return usable
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an integer, not {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if workers > usable:
        warnings.warn(
            f"{workers} workers asked for, but only {usable} CPUs are usable: using {usable}",
            RuntimeWarning,
            stacklevel=3,
        )
        return usable
    return workers
