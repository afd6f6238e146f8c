"""How each control is assessed from the log's events: pure functions, no I/O.

A compliance report cites log events (each with an inclusion proof); every control's
status is a function of the cited events, the report's time (``as_of``) and the number
of witnesses that cosigned the checkpoint. :func:`select` decides, while the log is read
once from the start, which events a report cites; :func:`assess` turns the cited events
into each control's status, reason and evidence. ``report verify`` runs :func:`assess`
again on the cited events and refuses the report if any control comes out differently,
so a status cannot be edited without breaking the report.

Statuses: ``met``, ``partial``, ``not_met``, ``not_applicable``. What a log can and
cannot show is said in each reason; controls outside what weightvault observes
(physical security, change management, HR) are ``not_applicable`` with that reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from weightvault.auditlog.events import AuditEvent

__all__ = [
    "BACKUP_MAX_AGE_DAYS",
    "RULES_VERSION",
    "STATUSES",
    "Assessment",
    "Context",
    "Selection",
    "assess",
    "is_state",
]

#: Bumped whenever an assessment changes; a report names the version it was assessed with.
#: 2: C25 also needs a recent backup (``broker.backup``, at most BACKUP_MAX_AGE_DAYS old).
RULES_VERSION: Final = 2
#: The oldest a newest backup may be for C25 to be met.
BACKUP_MAX_AGE_DAYS: Final = 7
STATUSES: Final = ("met", "partial", "not_met", "not_applicable")
#: Verifiers whose results rest on hardware evidence.
HARDWARE_VERIFIERS: Final = frozenset({"tpm", "sev-snp", "tdx", "nvidia-gpu", "composite", "attestation-token"})
MAX_KEK_AGE_DAYS: Final = 365
_DAY_MS: Final = 86_400_000
_RECENT: Final = 20
_CAP: Final = 50

Cited = Sequence[tuple[int, AuditEvent]]


@dataclass(frozen=True, slots=True)
class Context:
    """What an assessment may read besides the cited events."""

    as_of_ms: int
    witnesses: int
    tenant: str | None


@dataclass(frozen=True, slots=True)
class Assessment:
    status: str
    reason: str
    evidence: tuple[int, ...] = ()


def _done(event: AuditEvent, action: str) -> bool:
    return event.type in (f"{action}.done", action)


#: Actions whose latest event per resource a report cites (the state in force).
_LATEST: Final = (
    "tenant.change",
    "policy.change",
    "model.register",
    "device.enrol",
    "device.activate",
    "device.revoke",
    "device.change",
    "approval.policy.change",
    "custody.genesis",
    "custody.rekey",
    "custody.set.active",
    "key.rotate",
    "gateway.key.create",
    "gateway.key.revoke",
    "broker.backup",  # one resource ("broker"): the newest backup
)


def is_state(event: AuditEvent) -> bool:
    """Whether ``event`` sets state that stays in force (a policy, custody, a device...): such events
    count from the log's start, whatever the report's period; activity counts within the period."""
    return any(_done(event, action) for action in _LATEST)


@dataclass
class Selection:
    """The events a report cites, chosen while the log is read in order.

    Kept: the latest state-changing event per resource (tenants, policies, models, devices,
    custody, the approval policy, KEK rotations, gateway keys), the latest attestation per
    device, the most recent releases and every release resting on a non-hardware verifier,
    approvals executed, sentinel alerts, containment actions, budget alerts and denials,
    sandboxes (every one that ran without isolation) and blocked egress. Lists are capped;
    the newest are kept.
    """

    latest: dict[tuple[str, str], int] = field(default_factory=dict)
    recent: dict[str, list[int]] = field(default_factory=dict)
    flagged: dict[str, list[int]] = field(default_factory=dict)

    def add(self, index: int, event: AuditEvent) -> None:
        kind = event.type
        for action in _LATEST:
            if _done(event, action):
                if action.startswith("device."):
                    if "status" in event.details:  # a device's state; a bind to tenants says none
                        self.latest[("device", event.resource)] = index
                    return
                self.latest[(action, event.resource)] = index
                return
        if kind == "attest.pass":
            device = event.details.get("device")
            if isinstance(device, str):
                self.latest[("attest", device)] = index
        elif _done(event, "key.release"):
            self._keep("release", index)
            if event.details.get("verifier") not in HARDWARE_VERIFIERS:
                self._flag("release", index)
        elif _done(event, "approval.execute"):
            self._keep("approval", index)
        elif kind == "sentinel.alert":
            self._flag("alert", index)
        elif _done(event, "containment.hold") or _done(event, "containment.lift"):
            self._flag("containment", index)
        elif kind == "gateway.budget.alert" or (kind == "gateway.request" and event.decision == "deny"):
            self._keep("budget", index)
        elif kind == "gateway.request":
            self._keep("gateway", index)
        elif kind == "sandbox.start":
            self._keep("sandbox", index)
            if event.details.get("isolated") is not True:
                self._flag("sandbox", index)
        elif kind == "egress.blocked":
            self._keep("egress", index)

    def _keep(self, name: str, index: int) -> None:
        kept = self.recent.setdefault(name, [])
        kept.append(index)
        if len(kept) > _RECENT:
            del kept[0]

    def _flag(self, name: str, index: int) -> None:
        kept = self.flagged.setdefault(name, [])
        kept.append(index)
        if len(kept) > _CAP:
            del kept[0]

    def indices(self) -> list[int]:
        chosen = set(self.latest.values())
        for group in (*self.recent.values(), *self.flagged.values()):
            chosen.update(group)
        return sorted(chosen)


def _of(cited: Cited, predicate: Callable[[AuditEvent], bool]) -> list[tuple[int, AuditEvent]]:
    return [(i, e) for i, e in cited if predicate(e)]


def _ids(items: Iterable[tuple[int, AuditEvent]]) -> tuple[int, ...]:
    return tuple(sorted(i for i, _ in items))


def _releases(cited: Cited, ctx: Context) -> Assessment:
    releases = _of(cited, lambda e: _done(e, "key.release"))
    weak = [(i, e) for i, e in releases if e.details.get("verifier") not in HARDWARE_VERIFIERS]
    if weak:
        names = sorted({str(e.details.get("verifier")) for _, e in weak})
        return Assessment(
            "not_met", f"{len(weak)} release(s) rested on {', '.join(names)}, not hardware evidence", _ids(weak)
        )
    if not releases:
        return Assessment("partial", "no key was released in the period: nothing shows the gate at work", ())
    used = sorted({str(e.details.get("verifier")) for _, e in releases})
    return Assessment("met", f"every release cited rests on hardware attestation ({', '.join(used)})", _ids(releases))


def _devices(cited: Cited, ctx: Context) -> Assessment:
    devices = _of(cited, lambda e: e.resource.startswith("device:") and e.type.startswith("device."))
    active = [(i, e) for i, e in devices if e.details.get("status") == "active"]
    attested = _of(cited, lambda e: e.type == "attest.pass")
    if not devices:
        return Assessment("not_met", "no device is enrolled: keys are not bound to device identities", ())
    if not active:
        return Assessment("partial", f"{len(devices)} device(s) enrolled, none active", _ids(devices))
    return Assessment(
        "met",
        f"{len(active)} active device(s) with their own identity keys; {len(attested)} attested",
        _ids(active + attested),
    )


def _encryption(cited: Cited, ctx: Context) -> Assessment:
    models = _of(cited, lambda e: _done(e, "model.register"))
    if not models:
        return Assessment("not_applicable", "no model is registered in scope", ())
    tenants = _of(cited, lambda e: _done(e, "tenant.change") and e.details.get("op") == "create")
    rotations = _of(cited, lambda e: _done(e, "key.rotate") and e.resource.endswith("/kek"))
    last: dict[str, tuple[int, int]] = {}
    for i, e in [*tenants, *rotations]:
        if e.ts >= last.get(e.tenant, (0, -1))[1]:
            last[e.tenant] = (i, e.ts)
    stale = sorted(
        t for t in {e.tenant for _, e in models} if (ctx.as_of_ms - last.get(t, (0, 0))[1]) > MAX_KEK_AGE_DAYS * _DAY_MS
    )
    evidence = _ids(models) + tuple(i for i, _ in last.values())
    if stale:
        return Assessment(
            "partial",
            f"models are sealed per tensor under per-tenant KEKs; the KEK of {', '.join(stale)} is older than "
            f"{MAX_KEK_AGE_DAYS} days (or its creation is outside the period)",
            tuple(sorted(set(evidence))),
        )
    return Assessment(
        "met",
        f"{len(models)} model version(s) sealed per tensor (AES-256-GCM or ChaCha20-Poly1305) under per-tenant "
        f"KEKs no older than {MAX_KEK_AGE_DAYS} days",
        tuple(sorted(set(evidence))),
    )


def _registry(cited: Cited, ctx: Context) -> Assessment:
    models = _of(cited, lambda e: _done(e, "model.register"))
    if not models:
        return Assessment("not_applicable", "no model is registered in scope", ())
    return Assessment(
        "partial",
        f"the broker registers every sealed model version ({len(models)} cited) and releases keys only for them; "
        "copies outside it are not scanned",
        _ids(models),
    )


def _two_party(cited: Cited, ctx: Context) -> Assessment:
    policy = _of(cited, lambda e: _done(e, "approval.policy.change"))
    executed = _of(cited, lambda e: _done(e, "approval.execute"))
    if not policy:
        return Assessment("not_met", "no approval policy is in force: sensitive operations need one person", ())
    return Assessment(
        "met",
        f"an approval policy is in force (version {policy[-1][1].policy_version}); {len(executed)} approved "
        "operation(s) cited",
        _ids(policy + executed),
    )


def _custody(cited: Cited, ctx: Context) -> Assessment:
    """The share set in force: the newest of genesis and activations; its terms from its genesis or rekey."""
    made = {e.resource: (i, e) for i, e in cited if e.type in ("custody.genesis", "custody.rekey")}
    changes = [(i, e) for i, e in cited if e.type in ("custody.genesis", "custody.set.active")]
    if not changes:
        return Assessment("not_met", "the root key is not under M-of-N custody", ())
    active_index, active = changes[-1]
    terms = made.get(active.resource)
    if terms is None:
        return Assessment("partial", "the share set in force is not described in the period", (active_index,))
    threshold = terms[1].details.get("threshold")
    custodians = terms[1].details.get("custodians")
    count = len(custodians) if isinstance(custodians, Mapping | list) else 0
    evidence = tuple(sorted({active_index, terms[0]}))
    if not (isinstance(threshold, int) and not isinstance(threshold, bool) and threshold >= 2):
        return Assessment("partial", f"custody threshold is {threshold}: one person can unseal", evidence)
    held = f"the root key is held {threshold}-of-{count} by custodians"
    backups = _of(cited, lambda e: e.type == "broker.backup")
    if not backups:
        return Assessment("partial", f"{held}; no backup is recorded in the log", evidence)
    newest_index, newest = backups[-1]
    age_days = max(0, ctx.as_of_ms - newest.ts) / 86_400_000
    evidence = tuple(sorted({*evidence, newest_index}))
    if age_days > BACKUP_MAX_AGE_DAYS:
        return Assessment(
            "partial", f"{held}; the newest backup is {age_days:.0f} days old (over {BACKUP_MAX_AGE_DAYS})", evidence
        )
    return Assessment(
        "met",
        f"{held}; the newest backup is {age_days:.1f} days old, sealed to {newest.details.get('sealed_to')}, "
        f"and holds the log up to its own record (entry {newest_index})",
        evidence,
    )


def _audit_log(cited: Cited, ctx: Context) -> Assessment:
    if ctx.witnesses >= 1:
        return Assessment(
            "met", f"every event is in an RFC 6962 log whose checkpoint {ctx.witnesses} witness(es) cosigned", ()
        )
    return Assessment("partial", "the log's checkpoint is signed by the log but no witness cosigned it", ())


def _containment(cited: Cited, ctx: Context) -> Assessment:
    actions = _of(cited, lambda e: _done(e, "containment.hold") or _done(e, "containment.lift"))
    holds = [(i, e) for i, e in actions if "hold" in e.type]
    if holds:
        return Assessment("met", f"containment exercised in the period: {len(holds)} hold(s)", _ids(actions))
    return Assessment("partial", "containment is available but was not exercised in the period", ())


def _detection(cited: Cited, ctx: Context) -> Assessment:
    alerts = _of(cited, lambda e: e.type == "sentinel.alert")
    if alerts:
        rules = sorted({str(e.details.get("rule")) for _, e in alerts})
        return Assessment("met", f"the sentinel raised {len(alerts)} alert(s) ({', '.join(rules[:5])})", _ids(alerts))
    return Assessment(
        "partial", "no sentinel alert in the period: the sentinel's runs are recorded only when it alerts", ()
    )


def _honeypots(cited: Cited, ctx: Context) -> Assessment:
    decoys = _of(
        cited, lambda e: _done(e, "model.register") and (e.details.get("tags") or {}).get("honeypot") == "true"
    )
    if decoys:
        return Assessment("met", f"{len(decoys)} honeypot model(s) registered", _ids(decoys))
    return Assessment("not_met", "no honeypot model is registered", ())


def _budgets(cited: Cited, ctx: Context) -> Assessment:
    keys = _of(cited, lambda e: e.type == "gateway.key.create")
    enforced = _of(
        cited, lambda e: e.type == "gateway.budget.alert" or (e.type == "gateway.request" and e.decision == "deny")
    )
    if not keys:
        return Assessment("not_applicable", "no gateway key exists: no inference interface is served", ())
    if enforced:
        return Assessment(
            "met", f"budgets enforced on the gateway: {len(enforced)} alert(s) or refusal(s)", _ids(keys + enforced)
        )
    return Assessment(
        "partial", "gateway keys exist; no budget alert or refusal shows enforcement in the period", _ids(keys)
    )


def _gateway(cited: Cited, ctx: Context) -> Assessment:
    requests = _of(cited, lambda e: e.type == "gateway.request")
    if not requests:
        return Assessment("not_applicable", "no inference request through the gateway in the period", ())
    return Assessment(
        "partial",
        "per-key budgets and rate limits on every request; logprobs and output noise are not restricted",
        _ids(requests),
    )


def _egress(cited: Cited, ctx: Context) -> Assessment:
    sandboxes = _of(cited, lambda e: e.type == "sandbox.start")
    open_ = [(i, e) for i, e in sandboxes if e.details.get("isolated") is not True]
    blocked = _of(cited, lambda e: e.type == "egress.blocked")
    if not sandboxes:
        return Assessment("not_applicable", "no serving sandbox ran in the period", ())
    if open_:
        return Assessment("not_met", f"{len(open_)} sandbox(es) ran without network isolation", _ids(open_))
    return Assessment(
        "met",
        f"serving ran in isolated sandboxes; {len(blocked)} blocked egress attempt(s) cited",
        _ids(sandboxes + blocked),
    )


def _tenants(cited: Cited, ctx: Context) -> Assessment:
    tenants = _of(cited, lambda e: _done(e, "tenant.change") and e.details.get("op") == "create")
    if not tenants:
        return Assessment("not_applicable", "no tenant was created in the period", ())
    return Assessment(
        "met", f"{len(tenants)} tenant(s), each with its own KEK; every request is scoped to its tenant", _ids(tenants)
    )


def _provenance(cited: Cited, ctx: Context) -> Assessment:
    models = _of(cited, lambda e: _done(e, "model.register"))
    if not models:
        return Assessment("not_applicable", "no model is registered in scope", ())
    unsigned = [(i, e) for i, e in models if "signer" not in e.details]
    if unsigned:
        return Assessment(
            "partial",
            f"every sealed file is authenticated; {len(unsigned)} of {len(models)} model version(s) carry no signature",
            _ids(models),
        )
    return Assessment("met", "every registered model version carries a verified signature", _ids(models))


def _fixed(status: str, reason: str) -> Callable[[Cited, Context], Assessment]:
    return lambda cited, ctx: Assessment(status, reason)


RULES: Final[Mapping[str, Callable[[Cited, Context], Assessment]]] = {
    "encryption": _encryption,
    "attested_release": _releases,
    "device_identity": _devices,
    "registry": _registry,
    "least_privilege": _fixed(
        "partial", "roles per principal and short-lived result tokens; grants are not time-bound or capped"
    ),
    "two_party": _two_party,
    "export_approval": _two_party,
    "design_interfaces": _fixed(
        "met", "by design: keys are released only sealed to an attested workload; no interface returns plaintext"
    ),
    "budgets": _budgets,
    "gateway": _gateway,
    "egress": _egress,
    "tenants": _tenants,
    "audit_log": _audit_log,
    "containment": _containment,
    "provenance": _provenance,
    "honeypots": _honeypots,
    "detection": _detection,
    "evidence": _fixed("met", "this report: controls mapped to measures and RAND levels, each with proven evidence"),
    "sl_assessment": _fixed(
        "partial", "every control is mapped to RAND's security levels; no level is graded for this deployment"
    ),
    "custody": _custody,
    "layers": _fixed(
        "partial", "by design: policy and attestation are separate checks; no ablation test runs against this broker"
    ),
    "credentials": _fixed(
        "partial", "result tokens live minutes and are bound to an HPKE key; API tokens are bearer tokens"
    ),
    "design_plaintext": _fixed(
        "met", "by design: sealed files decrypt in memory into the destination; no plaintext file is written"
    ),
    "outside": _fixed(
        "not_applicable", "outside what weightvault observes (physical, organisational or build process)"
    ),
}


def assess(rule: str, cited: Cited, ctx: Context) -> Assessment:
    """One control's assessment. Raises KeyError for an unknown rule (the catalogue is checked at load)."""
    return RULES[rule](cited, ctx)
