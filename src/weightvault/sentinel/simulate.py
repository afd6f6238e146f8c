"""A seeded, deterministic simulator of a multi-tenant weightvault deployment, with labelled attacks.

It writes what the broker and the gateway would log (the event shapes of
docs/audit.md and docs/serving.md) as the interchange format of docs/sentinel.md:
``events.jsonl`` (one event per line with its log index) and ``labels.jsonl`` (one
incident per line). Same seed and profile, same bytes.

Benign traffic, over ``days`` days from a fixed Monday: workloads that restart and
release their models' keys (diurnal, from their devices), occasionally moving to
another device of their tenant's fleet; deploy days (Tuesday, Thursday) with new
model versions and large *approved* releases; a fleet hardware refresh (many new
devices enrolled at once, then used); on-call engineers working nights on the
models they know; key rotations; administrators reading objects and creating new
admins; gateway keys with diurnal traffic, one legitimately heavy customer, one
templated-prompt customer; typos at sign-in; a sandbox's telemetry blocked now and
then; people travelling (new client addresses).

Attacks, each an incident with its window and entities, in the families of
controls.md §5: stolen token from a new device, bulk release, after-hours first-time
access, a leaver exporting, a slow drip (breadth or gateway volume), approval
collusion, privilege escalation then read, a distillation swarm of gateway keys, a
PRADA-style extraction stream, a honeypot touch, and log tampering (lines removed
from the export).

Profiles change the parameters so that a detector tuned on one can be tested on
another: ``tune`` (the default) and ``holdout`` differ in tenant and fleet sizes,
traffic levels and every attack's intensity and timing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from weightvault.sentinel.alerts import FAMILIES as ALERT_FAMILIES

__all__ = ["PROFILES", "Scenario", "simulate"]

DAY: Final = 86_400_000
HOUR: Final = 3_600_000
MINUTE: Final = 60_000
#: 2026-01-05, a Monday, 00:00 UTC.
EPOCH: Final = 1_767_571_200_000


@dataclass(frozen=True)
class Profile:
    tenants: tuple[int, int]
    workloads: tuple[int, int]
    models: tuple[int, int]
    devices: tuple[int, int]
    humans: tuple[int, int]
    keys: tuple[int, int]
    restarts_per_day: tuple[float, float]
    gateway_per_day: tuple[int, int]
    bulk_models: tuple[int, int]
    drip_models: tuple[int, int]
    swarm_keys: tuple[int, int]
    prada_queries: tuple[int, int]
    prada_flips: tuple[int, int]
    collusion_latency_s: tuple[int, int]
    incidents_per_family: int


PROFILES: Final = {
    "tune": Profile(
        tenants=(3, 4), workloads=(4, 6), models=(8, 12), devices=(6, 10), humans=(3, 5), keys=(2, 4),
        restarts_per_day=(3.0, 8.0), gateway_per_day=(40, 200), bulk_models=(8, 14), drip_models=(4, 7),
        swarm_keys=(8, 16), prada_queries=(200, 500), prada_flips=(1, 10), collusion_latency_s=(15, 90),
        incidents_per_family=2,
    ),
    "holdout": Profile(
        tenants=(4, 6), workloads=(3, 8), models=(7, 16), devices=(4, 14), humans=(2, 6), keys=(1, 6),
        restarts_per_day=(2.0, 12.0), gateway_per_day=(20, 400), bulk_models=(7, 20), drip_models=(3, 6),
        swarm_keys=(6, 24), prada_queries=(150, 800), prada_flips=(2, 16), collusion_latency_s=(5, 110),
        incidents_per_family=2,
    ),
}  # fmt: skip

#: The attack families the simulator injects: every family an alert can suspect but "anomaly".
FAMILIES: Final = tuple(f for f in ALERT_FAMILIES if f != "anomaly")


@dataclass
class _Workload:
    id: str
    tenant: str
    devices: list[str]
    models: list[str]
    rate: float


@dataclass
class _Tenant:
    id: str
    models: list[str]
    versions: dict[str, int]
    devices: list[str]
    workloads: list[_Workload]
    humans: list[str]
    keys: list[tuple[str, str]]  # (key id, principal)
    honeypot: str


@dataclass
class Scenario:
    events: list[dict[str, Any]]
    labels: list[dict[str, Any]]

    def events_jsonl(self) -> str:
        return "".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in self.events)

    def labels_jsonl(self) -> str:
        return "".join(json.dumps(x, sort_keys=True, separators=(",", ":")) + "\n" for x in self.labels)


@dataclass
class _Sim:
    rng: random.Random
    profile: Profile
    days: int
    raw: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0
    ids: int = 0
    used: set[str] = field(default_factory=set)
    key_rates: dict[str, int] = field(default_factory=dict)

    def pick(self, candidates: list[str]) -> str:
        """An actor no earlier attack used, when there is one (incidents stay separable)."""
        fresh = [c for c in candidates if c not in self.used] or candidates
        chosen = self.rng.choice(fresh)
        self.used.add(chosen)
        return chosen

    # -- primitives ------------------------------------------------------------------------------

    def uid(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}{self.ids:05d}{self.rng.getrandbits(24):06x}"

    def emit(self, t: int, type_: str, tenant: str, actor: str, resource: str = "", **kw: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "v": 1,
            "ts": int(t),
            "type": type_,
            "tenant": tenant,
            "actor": actor,
            "resource": resource,
        }
        for name in ("decision", "reasons", "details", "hmac", "refs"):
            if kw.get(name):
                doc[name] = kw[name]
        self.seq += 1
        self.raw.append((int(t), self.seq, doc))
        return doc

    def client(self, who: str, variant: int = 0) -> dict[str, str]:
        tag = base64.b64encode(hashlib.sha256(f"{who}/{variant}".encode()).digest()).decode()
        return {"client": f"hmac-sha256:k1:{tag}"}

    def release(
        self, t: int, tenant: str, actor: str, device: str, model: str, *, approval: str | None = None,
        enrolled: bool = True, variant: int = 0,
    ) -> None:  # fmt: skip
        challenge = self.uid("c")
        jti = self.uid("j")
        hm = self.client(actor + device, variant)
        self.emit(t, "challenge.issued", tenant, actor, f"challenge:{challenge}", decision="allow",
                  details={"device": device}, hmac=hm)  # fmt: skip
        if not enrolled:
            self.emit(t + 40, "attest.fail", tenant, actor, f"challenge:{challenge}", decision="fail",
                      reasons=["the attestation key is not enrolled"], details={"device": device}, hmac=hm)  # fmt: skip
            return
        self.emit(t + 40, "attest.pass", tenant, actor, f"challenge:{challenge}", decision="pass",
                  details={"verifier": "tpm", "jti": jti, "device": device}, hmac=hm)  # fmt: skip
        details = {"jti": jti, "verifier": "tpm", "device": device, "policy_digest": "sha256:" + "ab" * 32}
        decision = self.emit(
            t + 60, "policy.decision", tenant, actor, model, decision="allow", details=details, hmac=hm
        )
        extra = {"approval": approval, "approvers": ["a1", "a2"]} if approval else {}
        intent = self.emit(t + 70, "key.release.intent", tenant, actor, model,
                           details={**details, "kem": "x25519-mlkem768", "partial": False, **extra},
                           refs={"decision": decision}, hmac=hm)  # fmt: skip
        self.emit(
            t + 90, "key.release.done", tenant, actor, model, refs={"intent": intent}, details={"jti": jti}, hmac=hm
        )

    def gateway(self, t: int, tenant: str, principal: str, key: str, model: str, tokens: int, sketch: int) -> None:
        self.emit(t, "gateway.request", tenant, principal, model, decision="allow", details={
            "key_id": key, "endpoint": "/v1/chat/completions", "status": 200, "stream": False,
            "tokens_in": self.rng.randint(20, 400), "tokens_out": tokens, "bytes_out": tokens * 4 + 300,
            "latency_us": self.rng.randint(20_000, 900_000), "prompt_chars": self.rng.randint(50, 2000),
            "prompt_sketch": f"simhash256:k1:{sketch:064x}",
        }, hmac={"prompt": "hmac-sha256:k1:" + base64.b64encode(sketch.to_bytes(32, "big")[:32]).decode()})  # fmt: skip

    def approval(self, t: int, tenant: str, requester: str, approver: str, op: str, latency_s: int) -> tuple[str, int]:
        rid = self.uid("r")
        res = f"approval:{rid}"
        digest = "sha256:" + hashlib.sha256(rid.encode()).hexdigest()
        request = {"op": op, "digest": digest, "params_digest": digest, "policy_version": 1, "needs": "1 of security"}
        self.emit(t, "approval.request", tenant, requester, res, details=request)
        t2 = t + latency_s * 1000
        self.emit(t2, "approval.submit", tenant, approver, res, decision="approve",
                  details={"digest": digest, "expires_at": t2 // 1000 + 3600, "signature": "00" * 64})  # fmt: skip
        self.emit(t2 + 5, "approval.granted", tenant, approver, res, decision="approved",
                  details={"approvers": [approver], "policy_version": 1})  # fmt: skip
        return rid, t2 + 1000

    def export(self, t: int, tenant: str, actor: str, model: str, approval: str) -> None:
        intent = self.emit(
            t, "key.export.intent", tenant, actor, model, details={"approval": approval, "recipient": "hpke"}
        )
        self.emit(t + 50, "key.export.done", tenant, actor, model, refs={"intent": intent})

    def write_ahead(self, t: int, action: str, tenant: str, actor: str, resource: str, details: dict[str, Any]) -> None:
        intent = self.emit(t, f"{action}.intent", tenant, actor, resource, details=details)
        self.emit(t + 30, f"{action}.done", tenant, actor, resource, refs={"intent": intent})

    def label(self, family: str, start: int, end: int, tenant: str, **entities: list[str]) -> None:
        self.labels.append({
            "incident": f"inc-{len(self.labels) + 1:03d}", "family": family, "start_ms": int(start),
            "end_ms": int(end), "tenant": tenant, "actors": sorted(set(entities.get("actors", []))),
            "devices": sorted(set(entities.get("devices", []))), "keys": sorted(set(entities.get("keys", []))),
            "resources": sorted(set(entities.get("resources", []))),
        })  # fmt: skip

    # -- time helpers ------------------------------------------------------------------------------

    def diurnal_time(self, day: int) -> int:
        """A time of day weighted to working hours (UTC 07-20), with a tail at night."""
        hour = self.rng.uniform(8, 19) if self.rng.random() < 0.8 else self.rng.uniform(0, 24)
        return EPOCH + day * DAY + int(hour * HOUR)

    def poisson(self, lam: float) -> int:
        # Knuth's method is fine for the small rates here.
        limit, k, p = pow(2.718281828459045, -lam), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1


def hash_index(name: str, n: int) -> int:
    """A stable team assignment: which of ``n`` workloads a person supports."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % n


def _between(rng: random.Random, span: tuple[int, int]) -> int:
    return rng.randint(span[0], span[1])


def _flip(rng: random.Random, value: int, bits: int) -> int:
    for b in rng.sample(range(256), bits):
        value ^= 1 << b
    return value


def _world(sim: _Sim) -> list[_Tenant]:
    rng, p = sim.rng, sim.profile
    tenants = []
    for ti in range(_between(rng, p.tenants)):
        tid = f"t{ti + 1}-{rng.choice(['acme', 'globex', 'initech', 'umbrella', 'hooli', 'stark'])}"
        names = [f"m{j:02d}" for j in range(_between(rng, p.models))]
        models = [f"{tid}/models/{n}" for n in names]
        devices = [f"dev-{tid}-{j:02d}" for j in range(_between(rng, p.devices))]
        workloads = []
        for w in range(_between(rng, p.workloads)):
            workloads.append(_Workload(
                f"wl-{tid}-{w}", tid, rng.sample(devices, min(len(devices), rng.randint(1, 2))),
                rng.sample(models, rng.randint(1, 3)), rng.uniform(*p.restarts_per_day)))  # fmt: skip
        humans = [f"hu-{tid}-{h}" for h in range(_between(rng, p.humans))]
        keys = [(f"k{ti}{k:02d}{rng.getrandbits(16):04x}", rng.choice(humans)) for k in range(_between(rng, p.keys))]
        tenants.append(_Tenant(tid, models, dict.fromkeys(models, 1), devices, workloads, humans, keys,
                               f"{tid}/models/finance-forecast-prod"))  # fmt: skip
    return tenants


def _setup(sim: _Sim, tenants: list[_Tenant]) -> None:
    t = EPOCH - DAY
    for tenant in tenants:
        for dev in tenant.devices:
            sim.write_ahead(t, "device.enrol", tenant.id, "operator", f"device:{dev}", {"kind": "tpm"})
            t += 1000
        for model in [*tenant.models, tenant.honeypot]:
            tags = {"honeypot": "true"} if model == tenant.honeypot else {"tier": "standard"}
            sim.write_ahead(t, "model.register", tenant.id, "publisher", f"{model}@1",
                            {"policy": "default", "kek_version": 1, "file_count": 2, "tags": tags})  # fmt: skip
            t += 1000
        for key, principal in tenant.keys:
            sim.emit(t, "gateway.key.create", tenant.id, "cli:operator", f"gateway-key:{key}",
                     details={"key_id": key, "principal": principal, "models": []})  # fmt: skip
            t += 1000
        for human in tenant.humans:
            sim.write_ahead(t, "principal.change", tenant.id, "operator", f"principal:{human}",
                            {"op": "create", "role": "auditor"})  # fmt: skip
            t += 1000


def _benign(sim: _Sim, tenants: list[_Tenant]) -> None:
    rng = sim.rng
    heavy = (tenants[0].id, tenants[0].keys[0][0], tenants[0].keys[0][1])
    templated = (tenants[-1].id, tenants[-1].keys[-1][0], tenants[-1].keys[-1][1])
    templates = [rng.getrandbits(256) for _ in range(6)]
    refresh_tenant, refresh_day = rng.choice(tenants), rng.randint(3, max(4, sim.days - 4))
    key_rates = sim.key_rates
    for day in range(sim.days):
        weekday = day % 7
        for tenant in tenants:
            if tenant is refresh_tenant and day == refresh_day:
                new = [f"dev-{tenant.id}-r{j:02d}" for j in range(rng.randint(6, 12))]
                t0 = EPOCH + day * DAY - 2 * HOUR  # the evening before: used from the next morning
                for j, dev in enumerate(new):
                    sim.write_ahead(t0 + j * 20_000, "device.enrol", tenant.id, "operator", f"device:{dev}",
                                    {"kind": "tpm"})  # fmt: skip
                tenant.devices.extend(new)
                for w in tenant.workloads:
                    w.devices = [rng.choice(new)]
            on_call = tenant.humans[(day // 7) % len(tenant.humans)]
            for w in tenant.workloads:
                for _ in range(sim.poisson(w.rate)):
                    t = sim.diurnal_time(day)
                    device = rng.choice(w.devices)
                    for model in w.models:
                        sim.release(t, tenant.id, w.id, device, f"{model}@{tenant.versions[model]}")
                        t += rng.randint(200, 3000)
                if rng.random() < 1 / 14:  # the scheduler moves the workload within the fleet
                    w.devices = [rng.choice(tenant.devices)]
            if weekday in (1, 3):  # deploy days: new versions, large approved releases
                t = EPOCH + day * DAY + rng.randint(10, 15) * HOUR
                bumped = rng.sample(tenant.models, rng.randint(1, min(4, len(tenant.models))))
                for model in bumped:
                    tenant.versions[model] += 1
                    sim.write_ahead(t, "model.register", tenant.id, "publisher", f"{model}@{tenant.versions[model]}",
                                    {"policy": "default", "kek_version": 1, "file_count": 2,
                                     "tags": {"tier": "standard"}})  # fmt: skip
                    t += 5000
                deployer = f"deploy-{tenant.id}"
                rid, t = sim.approval(t, tenant.id, deployer, rng.choice(["appr-sec1", "appr-sec2", "appr-ml1"]),
                                      "key.release", rng.randint(300, 3600))  # fmt: skip
                for model in tenant.models:
                    for _ in range(rng.randint(1, 3)):
                        sim.release(t, tenant.id, deployer, rng.choice(tenant.devices),
                                    f"{model}@{tenant.versions[model]}", approval=rid)  # fmt: skip
                        t += rng.randint(500, 20_000)
            for human in tenant.humans:
                # Working days: object reads (one in twenty from a new address: travel), and debugging.
                if weekday < 5:
                    for _ in range(rng.randint(0, 6)):
                        sim.emit(sim.diurnal_time(day), "object.read", tenant.id, human,
                                 f"{tenant.id}/{rng.choice(['devices', 'policies', 'models', 'principals'])}",
                                 details={"what": "list"},
                                 hmac=sim.client(human, 1 if rng.random() < 0.05 else 0))  # fmt: skip
                    if rng.random() < 0.3:  # debugging one of the team's workloads by day
                        w = tenant.workloads[hash_index(human, len(tenant.workloads))]
                        model = rng.choice(w.models)
                        t = EPOCH + day * DAY + int(rng.uniform(9, 18) * HOUR)
                        sim.release(t, tenant.id, human, rng.choice(w.devices), f"{model}@{tenant.versions[model]}")
                    if rng.random() < 0.02:
                        sim.emit(sim.diurnal_time(day), "auth.fail", tenant.id, human, "",
                                 reasons=["invalid API token"], hmac=sim.client(human))  # fmt: skip
            # on-call night work on the models the on-call engineer knows
            if rng.random() < 0.5:
                w = tenant.workloads[hash_index(on_call, len(tenant.workloads))]
                t = EPOCH + day * DAY + int(rng.uniform(0, 5) * HOUR)
                for model in w.models[:1]:
                    sim.release(t, tenant.id, on_call, rng.choice(w.devices), f"{model}@{tenant.versions[model]}")
                for _ in range(rng.randint(1, 4)):
                    sim.emit(t + rng.randint(60_000, 3_600_000), "object.read", tenant.id, on_call,
                             f"{tenant.id}/devices", details={"what": "list"}, hmac=sim.client(on_call))  # fmt: skip
            if day % 28 == 14:  # monthly KEK rotation and an approved backup export
                t = EPOCH + day * DAY + 11 * HOUR
                sim.write_ahead(t, "key.rotate", tenant.id, "operator", f"{tenant.id}/kek", {"version": 2})
                rid, t = sim.approval(
                    t + 60_000, tenant.id, "operator", "appr-sec1", "key.export", rng.randint(600, 7200)
                )
                sim.export(t, tenant.id, "operator", f"{tenant.models[0]}@{tenant.versions[tenant.models[0]]}", rid)
            if day == sim.days // 2:  # a new administrator is onboarded and looks around
                admin = f"hu-{tenant.id}-new"
                t = EPOCH + day * DAY + 10 * HOUR
                sim.write_ahead(t, "principal.change", tenant.id, "operator", f"principal:{admin}",
                                {"op": "create", "role": "tenant-admin"})  # fmt: skip
                for j in range(rng.randint(3, 10)):
                    sim.emit(t + (j + 1) * 600_000, "object.read", tenant.id, admin, f"{tenant.id}/policies",
                             details={"what": "list"})  # fmt: skip
            for key, principal in tenant.keys:
                n = key_rates[key] * (10 if (tenant.id, key) == heavy[:2] else 1)
                n = int(n * (0.4 if weekday >= 5 else 1.0))
                for _ in range(n):
                    t = sim.diurnal_time(day)
                    if (tenant.id, key) == templated[:2]:
                        sketch = _flip(rng, rng.choice(templates), rng.randint(30, 70))
                    else:
                        sketch = rng.getrandbits(256)
                    tokens = int(rng.lognormvariate(5.0, 0.8))
                    sim.gateway(t, tenant.id, principal, key, f"{rng.choice(tenant.models)}@1", tokens, sketch)
            if rng.random() < 0.3:
                sim.emit(sim.diurnal_time(day), "egress.blocked", tenant.id, tenant.workloads[0].id,
                         f"sandbox:{tenant.workloads[0].id}", details={"sandbox": tenant.workloads[0].id,
                         "family": "ipv4", "proto": "udp", "dst": "203.0.113.9", "port": 443, "packets": 1,
                         "total": 1})  # fmt: skip


# -- attacks ---------------------------------------------------------------------------------------


def _attack_start(sim: _Sim, earliest_day: int = 8, *, night: bool | None = None) -> int:
    day = sim.rng.randint(earliest_day, max(earliest_day, sim.days - 2))
    if night is True:
        hour = sim.rng.uniform(0, 5)
    elif night is False:
        hour = sim.rng.uniform(9, 17)
    else:
        hour = sim.rng.uniform(0, 24)
    return EPOCH + day * DAY + int(hour * HOUR)


def _stolen_token(sim: _Sim, tenants: list[_Tenant]) -> None:
    rng = sim.rng
    tenant = rng.choice(tenants)
    chosen = sim.pick([x.id for x in tenant.workloads])
    w = next(x for x in tenant.workloads if x.id == chosen)
    other = rng.choice([t for t in tenants if t is not tenant] or tenants)
    enrolled = rng.random() < 0.5
    device = rng.choice(other.devices) if enrolled and other is not tenant else f"dev-rogue-{rng.getrandbits(20):05x}"
    t0 = t = _attack_start(sim)
    models = []
    for _ in range(rng.randint(1, 3)):
        model = f"{rng.choice(w.models)}@{tenant.versions[rng.choice(w.models)]}"
        models.append(model)
        sim.release(t, tenant.id, w.id, device, model, enrolled=enrolled, variant=7)
        t += rng.randint(60_000, 900_000)
    sim.label("stolen_token", t0, t, tenant.id, actors=[w.id], devices=[device], resources=models)


def _bulk_release(sim: _Sim, tenants: list[_Tenant]) -> None:
    rng = sim.rng
    tenant = rng.choice(tenants)
    actor = sim.pick([w.id for w in tenant.workloads] + tenant.humans)
    device = rng.choice(tenant.devices)
    t0 = t = _attack_start(sim)
    count = min(len(tenant.models), rng.randint(*sim.profile.bulk_models))
    touched = []
    for model in rng.sample(tenant.models, count):
        for _ in range(rng.randint(1, 2)):
            res = f"{model}@{tenant.versions[model]}"
            touched.append(res)
            sim.release(t, tenant.id, actor, device, res)
            t += rng.randint(20_000, 240_000)
    sim.label("bulk_release", t0, t, tenant.id, actors=[actor], resources=touched)


def _after_hours(sim: _Sim, tenants: list[_Tenant]) -> None:
    rng = sim.rng
    tenant = rng.choice(tenants)
    human = sim.pick(tenant.humans)
    known = {m for w in tenant.workloads for m in w.models}
    fresh = [m for m in tenant.models if m not in known] or tenant.models
    t0 = t = _attack_start(sim, night=True)
    touched = []
    for model in rng.sample(fresh, min(len(fresh), rng.randint(1, 2))):
        res = f"{model}@{tenant.versions[model]}"
        touched.append(res)
        sim.release(t, tenant.id, human, rng.choice(tenant.devices), res, variant=3)
        t += rng.randint(120_000, 1_200_000)
    sim.label("after_hours", t0, t, tenant.id, actors=[human], resources=touched)


def _leaver(sim: _Sim, tenants: list[_Tenant]) -> None:
    rng = sim.rng
    tenant = rng.choice(tenants)
    human = sim.pick(tenant.humans)
    span_days = rng.randint(2, 6)
    t0 = _attack_start(sim, night=False)
    touched = []
    for d in range(span_days):
        base = t0 + d * DAY
        for _ in range(rng.randint(8, 30)):
            sim.emit(base + rng.randint(0, 8 * HOUR), "object.read", tenant.id, human,
                     f"{tenant.id}/{rng.choice(['models', 'policies', 'devices'])}", details={"what": "list"},
                     hmac=sim.client(human))  # fmt: skip
        model = rng.choice(tenant.models)
        res = f"{model}@{tenant.versions[model]}"
        touched.append(res)
        sim.release(base + rng.randint(0, 8 * HOUR), tenant.id, human, rng.choice(tenant.devices), res)
    model = rng.choice(tenant.models)
    res = f"{model}@{tenant.versions[model]}"
    rid, t = sim.approval(t0 + span_days * DAY, tenant.id, human, "appr-sec2", "key.export", rng.randint(600, 5400))
    sim.export(t, tenant.id, human, res, rid)
    touched.append(res)
    end = t + rng.randint(1, 3) * DAY
    sim.write_ahead(end, "principal.change", tenant.id, "operator", f"principal:{human}", {"op": "disable"})
    sim.label("leaver", t0, end, tenant.id, actors=[human], resources=touched)


def _slow_drip(sim: _Sim, tenants: list[_Tenant]) -> None:
    rng = sim.rng
    tenant = rng.choice(tenants)
    t0 = EPOCH + rng.randint(8, max(8, sim.days - 12)) * DAY + rng.randint(0, 12 * HOUR)
    if rng.random() < 0.5 or not tenant.keys:
        actor = sim.pick([w.id for w in tenant.workloads])
        w = next(w for w in tenant.workloads if w.id == actor)
        fresh = [m for m in tenant.models if m not in w.models]
        t = t0
        touched = []
        for model in rng.sample(fresh, min(len(fresh), rng.randint(*sim.profile.drip_models))):
            res = f"{model}@{tenant.versions[model]}"
            touched.append(res)
            sim.release(t, tenant.id, actor, rng.choice(w.devices), res)
            t += rng.randint(1, 3) * DAY + rng.randint(-2 * HOUR, 2 * HOUR)
        sim.label("slow_drip", t0, t, tenant.id, actors=[actor], resources=touched)
        return
    key, principal = rng.choice(tenant.keys)
    days = rng.randint(8, 12)
    t0 = EPOCH + rng.randint(8, max(8, sim.days - days - 1)) * DAY + rng.randint(0, 12 * HOUR)
    factor = rng.uniform(0.8, 2.0)  # extra traffic, as a multiple of the key's own: under any fixed limit
    for d in range(days):
        for _ in range(int(sim.key_rates[key] * factor)):
            t = t0 + d * DAY + rng.randint(0, 20 * HOUR)
            sim.gateway(t, tenant.id, principal, key, f"{rng.choice(tenant.models)}@1",
                        int(rng.lognormvariate(5.0, 0.8)), rng.getrandbits(256))  # fmt: skip
    sim.label("slow_drip", t0, t0 + days * DAY, tenant.id, actors=[principal], keys=[key])


def _collusion(sim: _Sim, tenants: list[_Tenant]) -> None:
    rng = sim.rng
    tenant = rng.choice(tenants)
    requester = sim.pick(tenant.humans)
    approver = f"appr-{rng.choice(['ml2', 'ops3', 'sec4'])}"
    t0 = _attack_start(sim, night=True)
    t = t0
    touched = []
    for _ in range(rng.randint(2, 4)):
        model = rng.choice(tenant.models)
        res = f"{model}@{tenant.versions[model]}"
        touched.append(res)
        rid, te = sim.approval(t, tenant.id, requester, approver, "key.export",
                               rng.randint(*sim.profile.collusion_latency_s))  # fmt: skip
        sim.export(te, tenant.id, requester, res, rid)
        t = t + rng.randint(1, 3) * DAY + rng.randint(-HOUR, HOUR)
    sim.label("approval_collusion", t0, t, tenant.id, actors=[requester, approver], resources=touched)


def _escalation(sim: _Sim, tenants: list[_Tenant]) -> None:
    rng = sim.rng
    tenant = rng.choice(tenants)
    who = rng.choice([*tenant.humans, f"svc-{tenant.id}-{rng.getrandbits(12):03x}"])
    t0 = _attack_start(sim)
    change = {"op": rng.choice(["create", "role"]), "role": rng.choice(["tenant-admin", "operator"])}
    by = rng.choice(["operator", tenant.humans[0]])
    sim.write_ahead(t0, "principal.change", tenant.id, by, f"principal:{who}", change)
    t = t0 + rng.randint(10 * MINUTE, 12 * HOUR)
    touched = []
    for _ in range(rng.randint(1, 3)):
        model = rng.choice(tenant.models)
        res = f"{model}@{tenant.versions[model]}"
        touched.append(res)
        sim.release(t, tenant.id, who, rng.choice(tenant.devices), res)
        t += rng.randint(30_000, 600_000)
    sim.label("privilege_escalation", t0, t, tenant.id, actors=[who], resources=touched)


def _swarm(sim: _Sim, tenants: list[_Tenant]) -> None:
    rng = sim.rng
    tenant = rng.choice(tenants)
    attacker = sim.pick(tenant.humans)
    t0 = _attack_start(sim)
    keys = [f"ks{rng.getrandbits(32):08x}" for _ in range(rng.randint(*sim.profile.swarm_keys))]
    for j, key in enumerate(keys):
        sim.emit(t0 + j * rng.randint(20_000, 200_000), "gateway.key.create", tenant.id, "cli:operator",
                 f"gateway-key:{key}", details={"key_id": key, "principal": attacker, "models": []})  # fmt: skip
    templates = [rng.getrandbits(256) for _ in range(rng.randint(1, 3))]
    start = t0 + HOUR
    span = rng.randint(2, 8) * HOUR
    end = start
    model = f"{rng.choice(tenant.models)}@1"
    for key in keys:
        for _ in range(rng.randint(30, 150)):
            t = start + rng.randint(0, span)
            end = max(end, t)
            sketch = _flip(rng, rng.choice(templates), rng.randint(4, 24))
            sim.gateway(t, tenant.id, attacker, key, model, rng.randint(600, 2000), sketch)
    sim.label("distillation_swarm", t0, end, tenant.id, actors=[attacker], keys=keys)


def _extraction(sim: _Sim, tenants: list[_Tenant]) -> None:
    rng = sim.rng
    tenant = rng.choice(tenants)
    t0 = _attack_start(sim)
    if rng.random() < 0.5 and tenant.keys:
        key, principal = rng.choice(tenant.keys)
    else:
        key, principal = f"kx{rng.getrandbits(32):08x}", rng.choice(tenant.humans)
        sim.emit(t0 - HOUR, "gateway.key.create", tenant.id, "cli:operator", f"gateway-key:{key}",
                 details={"key_id": key, "principal": principal, "models": []})  # fmt: skip
    seeds = [rng.getrandbits(256) for _ in range(rng.randint(3, 10))]
    n = rng.randint(*sim.profile.prada_queries)
    span = rng.randint(1, 6) * HOUR
    model = f"{rng.choice(tenant.models)}@1"
    times = sorted(t0 + rng.randint(0, span) for _ in range(n))
    for t in times:
        if rng.random() < 0.15:
            sketch = rng.getrandbits(256)
        else:
            sketch = _flip(rng, rng.choice(seeds), rng.randint(*sim.profile.prada_flips))
        sim.gateway(t, tenant.id, principal, key, model, rng.randint(1, 8), sketch)
    sim.label("extraction", t0, times[-1], tenant.id, actors=[principal], keys=[key])


def _honeypot(sim: _Sim, tenants: list[_Tenant]) -> None:
    rng = sim.rng
    tenant = rng.choice(tenants)
    actor = rng.choice([*tenant.humans, *(w.id for w in tenant.workloads)])
    t0 = _attack_start(sim)
    res = f"{tenant.honeypot}@1"
    how = rng.choice(["release", "read", "gateway"])
    if how == "release":
        sim.release(t0, tenant.id, actor, rng.choice(tenant.devices), res)
    elif how == "read":
        sim.emit(t0, "object.read", tenant.id, actor, res, details={"what": "model"})
    else:
        key = tenant.keys[0][0] if tenant.keys else "k-none"
        sim.gateway(t0, tenant.id, actor, key, res, 50, rng.getrandbits(256))
    sim.label("honeypot", t0, t0 + MINUTE, tenant.id, actors=[actor], resources=[res])


_ATTACKS: Final[dict[str, Callable[[_Sim, list[_Tenant]], None]]] = {
    "stolen_token": _stolen_token,
    "bulk_release": _bulk_release,
    "after_hours": _after_hours,
    "leaver": _leaver,
    "slow_drip": _slow_drip,
    "approval_collusion": _collusion,
    "privilege_escalation": _escalation,
    "distillation_swarm": _swarm,
    "extraction": _extraction,
    "honeypot": _honeypot,
}


def simulate(seed: int, *, days: int = 28, profile: str = "tune", families: tuple[str, ...] = FAMILIES) -> Scenario:
    """Generate one scenario. Deterministic in (seed, days, profile, families).

    Raises:
        ValueError: an unknown profile or family, or fewer than 14 days.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile is one of {', '.join(PROFILES)}")
    if days < 14:
        raise ValueError("a scenario needs at least 14 days (a week of baseline, then attacks)")
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown families {sorted(unknown)}")
    sim = _Sim(random.Random(f"weightvault-sim/{profile}/{seed}"), PROFILES[profile], days)
    tenants = _world(sim)
    _setup(sim, tenants)
    sim.key_rates.update({k: sim.rng.randint(*sim.profile.gateway_per_day) for t in tenants for k, _ in t.keys})
    _benign(sim, tenants)
    for family in families:
        if family == "log_tamper":
            continue
        for _ in range(sim.profile.incidents_per_family):
            _ATTACKS[family](sim, tenants)
    sim.raw.sort(key=lambda r: (r[0], r[1]))
    for index, (_, _, doc) in enumerate(sim.raw):
        doc["index"] = index
    for _, _, doc in sim.raw:
        refs = doc.get("refs")
        if refs:
            doc["refs"] = {k: v["index"] for k, v in refs.items()}
    events = [doc for _, _, doc in sim.raw]
    if "log_tamper" in families:
        for _ in range(sim.profile.incidents_per_family):
            at = sim.rng.randint(len(events) // 3, len(events) - 50)
            width = sim.rng.randint(1, 20)
            removed = events[at : at + width]
            del events[at : at + width]
            sim.label("log_tamper", removed[0]["ts"], events[at]["ts"], "*",
                      resources=sorted({e["resource"] for e in removed if "/models/" in e["resource"]}))  # fmt: skip
    sim.labels.sort(key=lambda x: (x["start_ms"], x["incident"]))
    for i, label in enumerate(sim.labels):
        label["incident"] = f"inc-{i + 1:03d}"
    return Scenario(events, sim.labels)
