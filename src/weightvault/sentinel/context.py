"""Per-entity state, and the ``ctx`` fields it gives each event before the detectors see it.

For every event the sentinel first computes ``ctx`` from what it knew *before* the
event (so "new" means new at that moment, and nothing looks ahead), then lets the
detectors read the event with its ``ctx``, then folds the event into the state:

* per principal (``actor``): first and last seen, devices, model names, client
  addresses (the keyed ``hmac.client`` hash), an hour-of-day histogram;
* per device: first seen, and the last enrolment, activation or binding;
* per gateway key: when it was created;
* per approval request: who asked and when, and how often each approver signed
  for each requester.

``ctx`` fields (the names rules use, docs/sentinel.md): ``hour``, ``weekday``,
``offhours``, ``new_actor``, ``actor_age_days``, ``new_device``, ``device_known``,
``device_tenant_known``,
``device_recently_enrolled``, ``model``, ``new_model``, ``actor_hour_rare``,
``new_client``, ``subject``, ``role``, ``requester``, ``approval_latency_s``,
``pair_count``, ``key_age_days``, ``access``. State is plain data
(:meth:`EntityState.to_state`), bounded per entity, and survives restarts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["ACCESS_TYPES", "KEY_ACCESS_TYPES", "EntityState", "model_name"]

DAY_MS: Final = 86_400_000
HOUR_MS: Final = 3_600_000
#: Events that are an access to a model by their actor (what "new model" and hour profiles count).
ACCESS_TYPES: Final = frozenset(
    {
        "key.release.intent",
        "key.export.intent",
        "policy.decision",
        "gateway.request",
        "object.read",
        "weight.access",
    }
)
#: Accesses to a model's keys or weights (not inference through the gateway): what "new model" counts.
KEY_ACCESS_TYPES: Final = frozenset(
    {"key.release.intent", "key.export.intent", "policy.decision", "object.read", "weight.access"}
)
#: Events through which a principal shows up from a device.
_DEVICE_TYPES: Final = frozenset(
    {"challenge.issued", "attest.pass", "attest.fail", "policy.decision", "key.release.intent"}
)
_ENROL_PREFIXES: Final = ("device.enrol", "device.activate", "device.change")
_MAX_PER_ACTOR: Final = 512
_RECENT_ENROLMENT_MS: Final = 14 * DAY_MS
#: Working hours, UTC: the simulator's and most operators' default (configurable in the engine).
WORK_START: Final = 7
WORK_END: Final = 20


def model_name(resource: str) -> str | None:
    """``tenant/models/name`` of a model resource (any version), else None."""
    if "/models/" not in resource:
        return None
    return resource.split("@", 1)[0]


class _Actor:
    __slots__ = ("clients", "devices", "first", "hours", "last", "models", "n")

    def __init__(self, ts: int) -> None:
        self.first = ts
        self.last = ts
        self.devices: dict[str, int] = {}
        self.models: dict[str, int] = {}
        self.clients: set[str] = set()
        self.hours = [0] * 24
        self.n = 0

    def to_state(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "last": self.last,
            "devices": self.devices,
            "models": self.models,
            "clients": sorted(self.clients),
            "hours": self.hours,
            "n": self.n,
        }

    @classmethod
    def from_state(cls, doc: Mapping[str, Any]) -> _Actor:
        actor = cls(int(doc["first"]))
        actor.last = int(doc["last"])
        actor.devices = {str(k): int(v) for k, v in doc["devices"].items()}
        actor.models = {str(k): int(v) for k, v in doc["models"].items()}
        actor.clients = set(doc["clients"])
        actor.hours = [int(h) for h in doc["hours"]][:24]
        actor.n = int(doc["n"])
        return actor


class EntityState:
    """What the sentinel remembers about each entity; computes ``ctx`` and folds events in."""

    def __init__(self, *, work_start: int = WORK_START, work_end: int = WORK_END) -> None:
        self.work_start, self.work_end = work_start, work_end
        self.actors: dict[str, _Actor] = {}
        self.devices: dict[str, int] = {}  # first seen
        self.fleet: dict[str, list[str]] = {}  # device -> tenants whose principals used it (at most 8)
        self.enrolled: dict[str, tuple[int, str]] = {}  # last enrolment, activation or binding, and its tenant
        self.keys: dict[str, int] = {}  # gateway key -> created
        self.requests: dict[str, tuple[int, str]] = {}  # approval:<id> -> (requested at, requester)
        self.pairs: dict[str, int] = {}  # "approver|requester" -> approvals

    def context(self, ev: Mapping[str, Any], t: int) -> dict[str, Any]:
        """The ``ctx`` of one event at effective time ``t`` (state before the event)."""
        kind: str = ev["type"]
        details: Mapping[str, Any] = ev["details"]
        resource: str = ev.get("resource", "")
        hour = (t // HOUR_MS) % 24
        weekday = ((t // DAY_MS) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        ctx: dict[str, Any] = {
            "hour": hour,
            "weekday": weekday,
            "offhours": weekday >= 5 or not self.work_start <= hour < self.work_end,
        }
        actor = self.actors.get(ev["actor"])
        ctx["new_actor"] = actor is None
        ctx["actor_age_days"] = 0 if actor is None else (t - actor.first) // DAY_MS
        access = kind in ACCESS_TYPES
        ctx["access"] = access
        device = details.get("device")
        if isinstance(device, str) and kind in _DEVICE_TYPES:
            ctx["device_known"] = device in self.devices
            ctx["device_tenant_known"] = ev["tenant"] in self.fleet.get(device, ())
            ctx["new_device"] = actor is not None and device not in actor.devices
            enrolled = self.enrolled.get(device)
            ctx["device_recently_enrolled"] = (
                enrolled is not None and enrolled[1] == ev["tenant"] and t - enrolled[0] <= _RECENT_ENROLMENT_MS
            )
        name = model_name(resource)
        if name is not None:
            ctx["model"] = name
            if kind in KEY_ACCESS_TYPES:
                ctx["new_model"] = actor is not None and name not in actor.models
        if actor is not None and actor.n >= 50:
            near = actor.hours[hour] + actor.hours[(hour - 1) % 24] + actor.hours[(hour + 1) % 24]
            ctx["actor_hour_rare"] = near * 100 < actor.n
        else:
            ctx["actor_hour_rare"] = False
        client = ev["hmac"].get("client")
        if isinstance(client, str) and actor is not None:
            ctx["new_client"] = client not in actor.clients
        if resource.startswith("principal:"):
            ctx["subject"] = resource[10:]
            role = details.get("role")
            if isinstance(role, str):
                ctx["role"] = role
        if kind.startswith("approval."):
            request = self.requests.get(resource)
            if request is not None:
                ctx["requester"] = request[1]
                ctx["approval_latency_s"] = max(0, t - request[0]) // 1000
                ctx["pair_count"] = self.pairs.get(f"{ev['actor']}|{request[1]}", 0)
        key = details.get("key_id")
        if isinstance(key, str):
            # A key's age counts from its creation event, or from its first request when the
            # stream holds no creation (a partial export).
            created = self.keys.get(key)
            ctx["key_age_days"] = 0 if created is None else (t - created) // DAY_MS
        return ctx

    def update(self, ev: Mapping[str, Any], t: int, ctx: Mapping[str, Any]) -> None:
        """Fold one event into the state (after the detectors have read it)."""
        kind: str = ev["type"]
        details: Mapping[str, Any] = ev["details"]
        resource: str = ev.get("resource", "")
        name = ev["actor"]
        actor = self.actors.get(name)
        if actor is None:
            actor = self.actors[name] = _Actor(t)
        actor.last = t
        actor.n += 1
        actor.hours[ctx["hour"]] += 1
        device = details.get("device")
        if isinstance(device, str) and kind in _DEVICE_TYPES and len(device) <= 256:
            self.devices.setdefault(device, t)
            tenants = self.fleet.setdefault(device, [])
            if ev["tenant"] not in tenants and len(tenants) < 8:
                tenants.append(ev["tenant"])
            if device not in actor.devices and len(actor.devices) < _MAX_PER_ACTOR:
                actor.devices[device] = t
        model = ctx.get("model")
        if (
            kind in KEY_ACCESS_TYPES
            and isinstance(model, str)
            and model not in actor.models
            and len(actor.models) < _MAX_PER_ACTOR
        ):
            actor.models[model] = t
        client = ev["hmac"].get("client")
        if isinstance(client, str) and len(actor.clients) < _MAX_PER_ACTOR:
            actor.clients.add(client)
        if resource.startswith("device:") and kind.startswith(_ENROL_PREFIXES) and not kind.endswith(".fail"):
            self.enrolled[resource[7:]] = (t, ev["tenant"])
            self.devices.setdefault(resource[7:], t)
        key = details.get("key_id")
        if isinstance(key, str) and kind in {"gateway.key.create", "gateway.request"} and len(key) <= 64:
            self.keys.setdefault(key, t)
        if kind == "approval.request":
            self.requests[resource] = (t, name)
        elif kind == "approval.submit" and "requester" in ctx:
            pair = f"{name}|{ctx['requester']}"
            self.pairs[pair] = self.pairs.get(pair, 0) + 1

    def to_state(self) -> dict[str, Any]:
        return {
            "actors": {k: v.to_state() for k, v in self.actors.items()},
            "devices": self.devices,
            "enrolled": {k: list(v) for k, v in self.enrolled.items()},
            "fleet": self.fleet,
            "keys": self.keys,
            "requests": {k: list(v) for k, v in self.requests.items()},
            "pairs": self.pairs,
        }

    def load(self, doc: Mapping[str, Any]) -> None:
        self.actors = {str(k): _Actor.from_state(v) for k, v in doc["actors"].items()}
        self.devices = {str(k): int(v) for k, v in doc["devices"].items()}
        self.enrolled = {str(k): (int(v[0]), str(v[1])) for k, v in doc["enrolled"].items()}
        self.fleet = {str(k): [str(t) for t in v] for k, v in doc["fleet"].items()}
        self.keys = {str(k): int(v) for k, v in doc["keys"].items()}
        self.requests = {str(k): (int(v[0]), str(v[1])) for k, v in doc["requests"].items()}
        self.pairs = {str(k): int(v) for k, v in doc["pairs"].items()}
