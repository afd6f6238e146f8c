"""Who and what an audit event is about: its entities, read only from structured fields.

An event names its tenant, its actor (a principal), a device (``details.device`` or a
``device:<id>`` resource), a gateway key (``details.key_id`` or ``gateway-key:<id>``), a
principal it acts on (``principal:<id>``) and the object it concerns (``resource``).
Free text (reasons, prompts, summaries) is never read here: text an attacker plants
in an event cannot name the entity that containment acts on (docs/sentinel.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Entities", "entities_of"]


@dataclass(frozen=True, slots=True)
class Entities:
    """Who and what an event (or an alert) is about; each a sorted tuple of identifiers."""

    tenant: str
    actors: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "actors": list(self.actors),
            "devices": list(self.devices),
            "keys": list(self.keys),
            "resources": list(self.resources),
        }

    def merge(self, other: Entities) -> Entities:
        return Entities(
            self.tenant,
            tuple(sorted(set(self.actors) | set(other.actors))),
            tuple(sorted(set(self.devices) | set(other.devices))),
            tuple(sorted(set(self.keys) | set(other.keys))),
            tuple(sorted(set(self.resources) | set(other.resources))),
        )


def _ident(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= 256 else None


def entities_of(ev: Mapping[str, Any]) -> Entities:
    """The entities named by an event's structured fields (``ev`` is the event's JSON object)."""
    details = ev.get("details") or {}
    actor = ev["actor"]
    resource = ev.get("resource", "")
    devices: list[str] = []
    keys: list[str] = []
    resources: list[str] = []
    device = _ident(details.get("device"))
    if device is not None:
        devices.append(device)
    elif resource.startswith("device:"):
        devices.append(resource[7:])
    key = _ident(details.get("key_id"))
    if key is not None:
        keys.append(key)
    elif resource.startswith("gateway-key:"):
        keys.append(resource[12:])
    actors = [actor] if actor and actor != "-" else []
    if resource.startswith("principal:"):
        actors.append(resource[10:])
    if resource and not resource.startswith(("device:", "principal:", "gateway-key:", "challenge:")):
        resources.append(resource)
    return Entities(ev["tenant"], tuple(sorted(set(actors))), tuple(devices), tuple(keys), tuple(resources))
