"""Replay on several cores: one engine per partition of the tenants, each reading the whole file.

Every detector keys its state by tenant (or by entities within a tenant), so a replay
can be split by tenant: a first pass counts each tenant's lines, and tenants are dealt,
largest first, to the least loaded partition. Events of no tenant
(``-`` or ``*``, such as failed authentications by unknown principals or enrolments of
shared devices) go to every partition; alerts they raise twice are merged. Partition 0
also checks the log indexes of every line, so gaps are found as in one pass.

Each process reads the file itself and skips other partitions' lines after a cheap
look at the tenant field, so nothing is serialised between processes but the alerts.
What differs from ``jobs=1``: the learned model is trained per partition (on its
tenants' windows); rules, baselines and the extraction tests give the same alerts.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import zlib
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
        doc = json.loads(line)
    except ValueError:
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


def _partition(line: bytes, plan: dict[bytes, int], jobs: int) -> int | None:
    """The partition of a line; None for every partition (events of no tenant)."""
    tenant = _tenant(line)
    if tenant is None:
        return 0  # a malformed line: partition 0 counts it
    if tenant in _SHARED:
        return None
    return plan.get(tenant, zlib.crc32(tenant) % jobs)


def _field(line: bytes, name: bytes) -> int | None:
    start = line.find(name)
    if start < 0 or line.count(name) != 1:
        return None
    start += len(name)
    end = start
    while end < len(line) and 48 <= line[end] <= 57:
        end += 1
    return int(line[start:end]) if end > start else None


def _numbers(line: bytes) -> tuple[int, int] | None:
    """(index, ts) of a line another partition reads, for the index check."""
    index, ts = _field(line, b'"index":'), _field(line, b'"ts":')
    if index is None or ts is None:
        found_index, found_ts = _INDEX.search(line), _TS.search(line)
        if found_index is None or found_ts is None:
            return None
        return int(found_index.group(1)), int(found_ts.group(1))
    return index, ts


def _scan(
    path: Path, part: int, jobs: int, config: SentinelConfig, plan: dict[bytes, int]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    engine = Sentinel(config)
    engine.check_indexes = part == 0
    out: list[dict[str, Any]] = []
    mine = 0
    with path.open("rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            where = _partition(line, plan, jobs) if jobs > 1 else part
            if where is None or where == part:
                mine += 1
                out.extend(a.to_json() for a in engine.feed_line(line))
            elif part == 0:
                numbers = _numbers(line)
                if numbers is not None:
                    out.extend(a.to_json() for a in engine.note_index(*numbers))
    out.extend(a.to_json() for a in engine.finish())
    return out, engine.counters.to_json()


def _worker(job: tuple[Path, int, int, SentinelConfig, dict[bytes, int]], send: Any) -> None:
    path, part, jobs, config, plan = job
    try:
        send.send(_scan(path, part, jobs, config, plan))
    except BaseException as exc:
        send.send(RuntimeError(f"sentinel worker {part}: {type(exc).__name__}: {exc}"))
    finally:
        send.close()


def scan_file(
    path: Path, config: SentinelConfig, *, jobs: int = 1, prepare: Callable[[], None] | None = None
) -> tuple[list[dict[str, Any]], Counters]:
    """Replay a JSON Lines file; returns its alerts (in time order) and the summed counters.

    ``prepare`` runs before the worker processes start (to import what they share).
    """
    if jobs <= 1:
        alerts, counters = _scan(path, 0, 1, config, {})
        return alerts, _counters([counters])
    counts: dict[bytes, int] = {}
    with path.open("rb") as lines:
        for line in lines:
            tenant = _tenant(line)
            if tenant is not None:
                counts[tenant] = counts.get(tenant, 0) + 1
    plan = assign(counts, jobs)
    if prepare is not None:
        prepare()
    # Forked workers inherit the compiled configuration (rules are closures, which do not pickle);
    # only the alerts come back, through a pipe each.
    context = multiprocessing.get_context("fork")
    pipes, workers = [], []
    for part in range(jobs):
        receive, send = context.Pipe(duplex=False)
        worker = context.Process(target=_worker, args=((path, part, jobs, config, plan), send), daemon=True)
        worker.start()
        send.close()
        pipes.append(receive)
        workers.append(worker)
    results = []
    try:
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
    return merged, _counters([c for _, c in results])


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
