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

from typing import Any, Final

import orjson

from weightvault.auditlog.entities import Entities, entities_of
from weightvault.auditlog.events import EVENT_TYPES

__all__ = ["KNOWN_TYPES", "BadEventError", "Entities", "entities_of", "parse_event", "parse_line"]

#: Event types the broker writes.
KNOWN_TYPES: Final = EVENT_TYPES
_MAX_LINE: Final = 1 << 20
_MAX_ID: Final = 1024


class BadEventError(ValueError):
    """A line that is not an audit event of the interchange format (counted, then skipped)."""


def parse_event(doc: object) -> dict[str, Any]:
    """Check one decoded event's shape; returns it (with ``resource``, ``details``, ``refs`` and
    ``hmac`` always present).

    Raises:
        BadEventError: not an object with ``index`` (or none), integer ``ts``, string ``type``,
            ``tenant``, ``actor`` and ``resource`` (at most 1024 characters each), object
            ``details``/``refs``/``hmac`` and list ``reasons``.
    """
    # One pass of direct checks: this runs for every event of a replay.
    if type(doc) is not dict:
        raise BadEventError("an event is a JSON object")
    ts = doc.get("ts")
    if type(ts) is not int or ts < 0:
        raise BadEventError("ts is milliseconds since the epoch")
    index = doc.get("index")
    if index is not None and (type(index) is not int or index < 0):
        raise BadEventError("index is a log index")
    kind, tenant, actor = doc.get("type"), doc.get("tenant"), doc.get("actor")
    resource = doc.setdefault("resource", "")
    if (
        type(kind) is not str
        or type(tenant) is not str
        or type(actor) is not str
        or type(resource) is not str
        or len(kind) > _MAX_ID
        or len(tenant) > _MAX_ID
        or len(actor) > _MAX_ID
        or len(resource) > _MAX_ID
    ):
        raise BadEventError(f"type, tenant, actor and resource are strings of at most {_MAX_ID} characters")
    for name in ("details", "refs", "hmac"):
        if type(doc.setdefault(name, {})) is not dict:
            raise BadEventError(f"{name} is an object")
    if type(doc.get("reasons", [])) is not list:
        raise BadEventError("reasons is a list")
    return doc


def parse_line(line: bytes | str) -> dict[str, Any]:
    """One line of a JSON Lines export (UTF-8).

    Parsed with orjson, a strict RFC 8259 parser about 2.5 times as fast as the standard
    library's here (a replay's largest single cost); it refuses integers beyond 64 bits,
    which no event has.

    Raises:
        BadEventError: too long, not UTF-8, not JSON, or not an event.
    """
    if len(line) > _MAX_LINE:
        raise BadEventError("line longer than 1 MiB")
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise BadEventError("not JSON") from exc
    return parse_event(doc)
