"""Model-extraction detectors over the gateway's prompt sketches (``details.prompt_sketch``).

The gateway records for every request a keyed 256-bit SimHash of the prompt
(docs/serving.md): the Hamming distance of two sketches estimates how different two
prompts are, without the prompts.

* :class:`PradaTest` (Juuti et al., "PRADA", EuroS&P 2019): per API key, the minimum
  distance of each new query to the key's earlier queries. Natural queries give
  distances that are close to normally distributed; an extraction attack that
  explores around seed inputs gives a skewed, multi-modal set of distances. Every
  ``step`` queries, once the key has ``min_queries``, the Shapiro-Wilk statistic of
  the recent distances is tested against ``delta``.
* :class:`SwarmTest` (distillation "hydra" swarms, ATLAS CS0056): near-duplicate prompts
  sent by many distinct keys of one tenant within a window. Sketches are split into
  8 bands of 32 bits (locality-sensitive hashing): two prompts a few dozen bits apart
  share a band with high probability, unrelated prompts almost never do.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["PradaTest", "SwarmTest", "parse_sketch"]

_BANDS: Final = 8
_BAND_BITS: Final = 32
_MASK: Final = (1 << _BAND_BITS) - 1


def parse_sketch(value: object) -> int | None:
    """The 256-bit integer of ``simhash256:<kid>:<hex>``, or None."""
    if not isinstance(value, str) or not value.startswith("simhash256:"):
        return None
    hexpart = value.rpartition(":")[2]
    if len(hexpart) != 64:
        return None
    try:
        return int(hexpart, 16)
    except ValueError:
        return None


@dataclass
class _KeyHistory:
    sketches: deque[int]
    distances: deque[int]
    since_test: int = 0
    alerted: bool = False


class PradaTest:
    def __init__(self, *, history: int = 32, window: int = 100, min_queries: int = 60, step: int = 50,
                 delta: float = 0.80) -> None:  # fmt: skip
        self.history, self.window, self.min_queries, self.step, self.delta = history, window, min_queries, step, delta
        self.keys: dict[str, _KeyHistory] = {}

    def add(self, key: str, sketch: int) -> float | None:
        """Record one query; returns the Shapiro-Wilk W when the key's distances just failed the test."""
        h = self.keys.get(key)
        if h is None:
            h = self.keys[key] = _KeyHistory(deque(maxlen=self.history), deque(maxlen=self.window))
        # Distances count once the history is full: the minimum over fewer earlier queries is
        # larger, and mixing the two would make a natural stream look non-normal.
        if len(h.sketches) == self.history:
            h.distances.append(min(map(int.bit_count, map(sketch.__xor__, h.sketches))))
        h.sketches.append(sketch)
        h.since_test += 1
        if len(h.distances) < self.min_queries or h.since_test < self.step:
            return None
        h.since_test = 0
        values = list(h.distances)
        if max(values) == min(values):
            w = 0.0  # identical distances: nothing natural looks like this
        else:
            from scipy.stats import shapiro

            w = float(shapiro(values).statistic)
        # One alert per episode: the key re-arms once its queries look natural again.
        if w >= self.delta:
            h.alerted = False
            return None
        if h.alerted:
            return None
        h.alerted = True
        return w

    def to_state(self) -> dict[str, Any]:
        return {k: [list(h.sketches), list(h.distances), h.since_test, h.alerted] for k, h in self.keys.items()}

    def load(self, doc: Mapping[str, Any]) -> None:
        self.keys = {
            str(k): _KeyHistory(
                deque((int(x) for x in v[0]), maxlen=self.history),
                deque((int(x) for x in v[1]), maxlen=self.window),
                int(v[2]),
                bool(v[3]),
            )
            for k, v in doc.items()
        }


class SwarmTest:
    def __init__(self, *, window_ms: int = 3_600_000, min_keys: int = 5, min_hits: int = 3) -> None:
        self.window_ms, self.min_keys, self.min_hits = window_ms, min_keys, min_hits
        # (tenant, band offset, band bytes) -> {key: [last seen, hits within the window]}
        self.buckets: dict[tuple[str, int, bytes], dict[str, list[int]]] = {}
        self.last_sweep = 0

    def add(self, tenant: str, key: str, sketch: int, t: int) -> set[str] | None:
        """Record one query; returns the keys of a swarm this query completes, if any.

        A key belongs to a bucket's swarm once it sent ``min_hits`` prompts into it within
        the window: a chance collision of unrelated prompts does not repeat, a template does.
        """
        if t - self.last_sweep > 6 * self.window_ms:  # memory only: every test checks its own times
            self._sweep(t)
        found: set[str] | None = None
        raw = sketch.to_bytes(32, "little")
        buckets = self.buckets
        window = self.window_ms
        for band in range(0, 32, _BAND_BITS // 8):
            slot = (tenant, band, raw[band : band + _BAND_BITS // 8])
            keys = buckets.get(slot)
            if keys is None:
                buckets[slot] = {key: [t, 1]}
                continue
            entry = keys.get(key)
            if entry is None or t - entry[0] > window:
                keys[key] = entry = [t, 0]
            entry[0] = t
            entry[1] += 1
            if entry[1] >= self.min_hits and len(keys) >= self.min_keys:
                members = {k for k, (seen, hits) in keys.items() if hits >= self.min_hits and t - seen <= window}
                if len(members) >= self.min_keys:
                    found = members if found is None else found | members
        return found

    def _sweep(self, t: int) -> None:
        self.last_sweep = t
        stale = []
        for slot, keys in self.buckets.items():
            for k in [k for k, (seen, _) in keys.items() if t - seen > self.window_ms]:
                del keys[k]
            if not keys:
                stale.append(slot)
        for slot in stale:
            del self.buckets[slot]

    def to_state(self) -> list[Any]:
        return [[slot[0], slot[1], slot[2].hex(), keys] for slot, keys in self.buckets.items()]

    def load(self, doc: list[Any]) -> None:
        self.buckets = {
            (str(tenant), int(band), bytes.fromhex(value)): {str(k): [int(v[0]), int(v[1])] for k, v in keys.items()}
            for tenant, band, value, keys in doc
        }
