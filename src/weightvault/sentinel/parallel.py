"""Replay on several cores: one engine per partition of the tenants, each reading the whole file.

Every detector keys its state by tenant (or by entities within a tenant), so a replay
can be split by tenant: a first pass reads each line's tenant (a look at the text, a
parse only when that is ambiguous), counts each tenant's lines and deals tenants,
largest first, to the least loaded partition, one byte per line. Events of no tenant
(``-`` or ``*``, such as failed authentications by unknown principals or enrolments of
shared devices) go to every partition; alerts they raise twice are merged. The parent
process checks the log indexes of every line while the workers run, so gaps are found
as in one pass.

Each worker reads the file itself and skips other partitions' lines by their byte, so
nothing is serialised between processes but the alerts.
What differs from ``jobs=1``: the learned model is trained per partition (on its
tenants' windows); rules, baselines and the extraction tests give the same alerts.
"""

from __future__ import annotations

import json
import multiprocessing
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from weightvault.sentinel.engine import Counters, Sentinel, SentinelConfig

__all__ = ["scan_file"]

_TENANT: Final = re.compile(rb'"tenant"\s*:\s*"((?:[^"\\]|\\.)*)"')
_INDEX: Final = re.compile(rb'"index"\s*:\s*(\d+)')
_TS: Final = re.compile(rb'"ts"\s*:\s*(\d+)')
_SHARED: Final = frozenset({b"-", b"*", b""})


_COMPACT: Final = b'"tenant":"'


def _tenant(line: bytes) -> bytes | None:
    """A line's tenant, from a look at the text when it is unambiguous, else by parsing (None: malformed)."""
    # The export's compact form, with one "tenant" key and no escapes in its value: two C-speed scans.
    if line.count(b'"tenant"') == 1:
        start = line.find(_COMPACT)
        if start >= 0:
            start += len(_COMPACT)
            end = line.find(b'"', start)
            if end > 0 and b"\\" not in line[start:end]:
                return line[start:end]
    found = _TENANT.findall(line)
    if len(found) == 1:
        return bytes(found[0])
    # No tenant, or a "tenant" key nested in the details too: parse to be sure.
    try:
        doc = json.loads(line)  # noqa: TID251 - the hot path: json's speed, and its failures caught
    except (ValueError, RecursionError):
        return None
    tenant = doc.get("tenant") if isinstance(doc, dict) else None
    return tenant.encode() if isinstance(tenant, str) else None


def assign(counts: dict[bytes, int], jobs: int) -> dict[bytes, int]:
    """Tenants to partitions, the largest first onto the least loaded (deterministic: ties by name)."""
    loads = [0] * jobs
    out: dict[bytes, int] = {}
    for tenant, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        part = min(range(jobs), key=lambda p: (loads[p], p))
        out[tenant] = part
        loads[part] += count
    return out


#: A line every partition reads (an event of no tenant).
_EVERY: Final = 255


def _routes(path: Path, jobs: int) -> bytearray:
    """Each non-empty line's partition (or :data:`_EVERY`), one byte per line, from one pass that
    first counts each tenant's lines and then deals tenants to partitions."""
    tenants: list[bytes | None] = []
    counts: dict[bytes, int] = {}
    with path.open("rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            tenant = _tenant(line)
            tenants.append(tenant)
            if tenant is not None and tenant not in _SHARED:
                counts[tenant] = counts.get(tenant, 0) + 1
    plan = assign(counts, jobs)
    # A malformed line goes to partition 0, which counts it.
    return bytearray(0 if t is None else _EVERY if t in _SHARED else plan[t] for t in tenants)


def _numbers(line: bytes) -> tuple[int, int] | None:
    """(index, ts) of a line, for the index check."""
    index, ts = _INDEX.search(line), _TS.search(line)
    if index is None or ts is None:
        return None
    return int(index.group(1)), int(ts.group(1))


def _scan(path: Path, part: int, config: SentinelConfig, routes: bytearray | None) -> tuple[list[Any], dict[str, Any]]:
    """One partition's replay (``routes`` None: every line, indexes checked too)."""
    engine = Sentinel(config)
    engine.check_indexes = routes is None
    out: list[dict[str, Any]] = []
    position = 0
    with path.open("rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            route = part if routes is None else routes[position]
            position += 1
            if route in (part, _EVERY):
                out.extend(a.to_json() for a in engine.feed_line(line))
    out.extend(a.to_json() for a in engine.finish())
    return out, engine.counters.to_json()


def _indexes(path: Path, config: SentinelConfig) -> tuple[list[Any], dict[str, Any]]:
    """The index check over every line, for a partitioned replay (the workers skip it)."""
    engine = Sentinel(config)
    out: list[dict[str, Any]] = []
    with path.open("rb") as lines:
        for line in lines:
            numbers = _numbers(line) if line.strip() else None
            if numbers is not None:
                out.extend(a.to_json() for a in engine.note_index(*numbers))
    c = engine.counters
    counters = {
        "index_gap": c.index_gap,
        "index_reorder": c.index_reorder,
        "alerts": c.alerts,
        "by_detector": dict(c.by_detector),
    }
    return out, counters


def _worker(job: tuple[Path, int, SentinelConfig, bytearray], send: Any) -> None:
    path, part, config, routes = job
    try:
        send.send(_scan(path, part, config, routes))
    except BaseException as exc:
        send.send(RuntimeError(f"sentinel worker {part}: {type(exc).__name__}: {exc}"))
    finally:
        send.close()


def scan_file(
    path: Path, config: SentinelConfig, *, jobs: int = 1, prepare: Callable[[], None] | None = None
) -> tuple[list[dict[str, Any]], Counters]:
    """Replay a JSON Lines file; returns its alerts (in time order) and the summed counters
    (``events + bad_event`` is the number of non-blank lines).

    ``prepare`` runs before the worker processes start (to import what they share).
    """
    if jobs <= 1:
        alerts, counters = _scan(path, 0, config, None)
        return alerts, _counters([counters])
    if prepare is not None:
        prepare()
    routes = _routes(path, jobs)
    # Forked workers inherit the compiled configuration (rules are closures, which do not pickle)
    # and the routes; only the alerts come back, through a pipe each. Meanwhile this process
    # checks the log indexes of every line.
    context = multiprocessing.get_context("fork")
    pipes, workers = [], []
    for part in range(jobs):
        receive, send = context.Pipe(duplex=False)
        worker = context.Process(target=_worker, args=((path, part, config, routes), send), daemon=True)
        worker.start()
        send.close()
        pipes.append(receive)
        workers.append(worker)
    results = []
    try:
        results.append(_indexes(path, config))
        for receive in pipes:
            outcome = receive.recv()
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
    seen: set[str] = set()
    merged: list[dict[str, Any]] = []
    for alerts, _ in results:
        for alert in alerts:
            key = json.dumps(alert, sort_keys=True)
            if key not in seen:  # an event of no tenant raised the same alert in every partition
                seen.add(key)
                merged.append(alert)
    merged.sort(key=lambda a: (a["ts"], a["detector"], a["rule"], a["evidence"]))
    total = _counters([c for _, c in results])
    # Events of no tenant were read by every worker: count each line once.
    total.events = len(routes) - total.bad_event
    return merged, total


def _counters(parts: list[dict[str, Any]]) -> Counters:
    total = Counters()
    for part in parts:
        for name, value in part.items():
            if name == "by_detector":
                for k, v in value.items():
                    total.by_detector[k] = total.by_detector.get(k, 0) + v
            else:
                setattr(total, name, getattr(total, name) + value)
    return total
