"""The sentinel's view of one audit event: parsed leniently, counted when bad, with its entities.

The input is the interchange format of docs/sentinel.md: one audit event per line, the
JSON object that ``weightvault audit export --format jsonl`` writes (the event's fields
and its log ``index``). Events are kept as the parsed dicts (building an
:class:`~weightvault.auditlog.events.AuditEvent` per event would cost more than all the
detectors together); :func:`parse_event` checks the shape every detector relies on and
raises :class:`BadEventError` otherwise, so a malformed line is counted and skipped, never
fatal.

Entities (:mod:`weightvault.auditlog.entities`) come only from structured fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from weightvault.auditlog.entities import Entities, entities_of
from weightvault.auditlog.events import EVENT_TYPES

__all__ = ["KNOWN_TYPES", "BadEventError", "Entities", "entities_of", "parse_event", "parse_line"]

#: Event types the broker writes.
KNOWN_TYPES: Final = EVENT_TYPES
_MAX_LINE: Final = 1 << 20
_MAX_ID: Final = 1024


class BadEventError(ValueError):
    """A line that is not an audit event of the interchange format (counted, then skipped)."""


def _str(doc: Mapping[str, Any], name: str, default: str | None = None) -> str:
    value = doc.get(name, default)
    if not isinstance(value, str) or len(value) > _MAX_ID:
        raise BadEventError(f"{name} is not a string of at most {_MAX_ID} characters")
    return value


def parse_event(doc: object) -> dict[str, Any]:
    """Check one decoded event's shape; returns it (with ``details``, ``refs`` and ``hmac`` as dicts).

    Raises:
        BadEventError: not an object with ``index`` (or none), integer ``ts``, string ``type``,
            ``tenant``, ``actor`` and ``resource``, and object ``details``/``refs``/``hmac``.
    """
    if not isinstance(doc, dict):
        raise BadEventError("an event is a JSON object")
    ts = doc.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
        raise BadEventError("ts is milliseconds since the epoch")
    index = doc.get("index")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
        raise BadEventError("index is a log index")
    for name in ("type", "tenant", "actor"):
        _str(doc, name)
    doc.setdefault("resource", "")
    _str(doc, "resource")
    for name in ("details", "refs", "hmac"):
        value = doc.setdefault(name, {})
        if not isinstance(value, dict):
            raise BadEventError(f"{name} is an object")
    reasons = doc.get("reasons", [])
    if not isinstance(reasons, list):
        raise BadEventError("reasons is a list")
    return doc


def parse_line(line: bytes | str) -> dict[str, Any]:
    """One line of a JSON Lines export.

    Raises:
        BadEventError: too long, not JSON, or not an event.
    """
    if len(line) > _MAX_LINE:
        raise BadEventError("line longer than 1 MiB")
    try:
        doc = json.loads(line)
    except ValueError as exc:
        raise BadEventError("not JSON") from exc
    return parse_event(doc)
