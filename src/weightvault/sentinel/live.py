"""The sentinel against a live log: follow, verify, detect, record alerts, contain, remember.

:class:`LiveSentinel` polls a :class:`~weightvault.auditlog.follower.TileFollower` (over a
broker's ``/v1/audit`` tiles API, or over a local log database through the same tiles
code), so every entry it reads is in a checkpoint whose signature and witness quorum
verified and whose root the entries reproduce. Each new entry goes through the engine;
each alert is recorded in the log through the broker (``POST /v1/sentinel/alerts``) and
then answered by the containment policy (:class:`ContainmentPolicy`) through the
broker's own API (``POST /v1/containment/holds``), citing the alert's index. Nothing goes
around the broker, and the sentinel's principal can only place holds.

A verification failure is counted and alerted (``log-verification``); the follower
keeps its verified position, so nothing unverified is ever read. A log that does not
grow for ``max_quiet_s`` is alerted as ``log-stalled``. The engine's state and the
log position are written atomically after a poll that read something (at most every
``save_every_s``) and on exit: after a clean exit no entry is fed twice; after a crash,
the entries since the last write are read again and their alerts may repeat.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from weightvault.auditlog.follower import TileFollower
from weightvault.encoding import parse_json_object
from weightvault.errors import AuditLogError, RuleError, UnavailableError, WeightVaultError
from weightvault.files import atomic_file
from weightvault.sentinel.alerts import SEVERITIES, Alert
from weightvault.sentinel.engine import Sentinel
from weightvault.sentinel.stream import Entities

__all__ = ["ACTIONS", "ContainmentPolicy", "LiveSentinel", "Responder"]

#: Containment actions, and the hold kind and alert entity each acts on.
ACTIONS: Final = {
    "freeze_principal": ("principal", "actors"),
    "suspend_key": ("gateway_key", "keys"),
    "hold_device": ("device", "devices"),
    "require_approval": ("model", "resources"),
}
_MAX_TARGETS: Final = 3


class Responder(Protocol):
    """Where alerts and holds go: the broker (:class:`~weightvault.client.broker.BrokerClient`)."""

    def post_alert(self, alert: Mapping[str, Any]) -> int: ...

    def hold(self, kind: str, target: str, *, rule: str, alert_index: int | None = None) -> str: ...


@dataclass(frozen=True, slots=True)
class _Action:
    rules: frozenset[str]
    families: frozenset[str]
    severities: frozenset[str]
    actions: tuple[str, ...]

    def applies(self, alert: Alert) -> bool:
        return (
            (not self.rules or alert.rule in self.rules)
            and (not self.families or alert.family in self.families)
            and (not self.severities or alert.severity in self.severities)
        )


@dataclass(frozen=True)
class ContainmentPolicy:
    """Which alerts lead to which holds, per rule, family and severity; and how many an hour.

    Targets come from the alert's entities (structured fields of its evidence), at most
    three of each kind; the broker checks each against the alert's evidence again.
    """

    actions: tuple[_Action, ...]
    max_per_hour: int = 10

    @classmethod
    def parse(cls, doc: Mapping[str, Any] | None) -> ContainmentPolicy:
        """Raises RuleError for an unknown action, severity or key."""
        if not doc:
            return cls(())
        if set(doc) - {"max_actions_per_hour", "actions"}:
            raise RuleError("containment has max_actions_per_hour and actions")
        out = []
        for raw in doc.get("actions", []):
            if not isinstance(raw, Mapping) or set(raw) - {"when", "do"}:
                raise RuleError("each containment action has when and do")
            when = raw.get("when") or {}
            if set(when) - {"rule", "family", "severity"}:
                raise RuleError("containment when: rule, family, severity")
            do = tuple(raw.get("do") or ())
            if not do or set(do) - set(ACTIONS):
                raise RuleError(f"containment do: some of {', '.join(ACTIONS)}")
            severities = frozenset(_list(when.get("severity")))
            if severities - set(SEVERITIES):
                raise RuleError(f"containment severity: some of {', '.join(SEVERITIES)}")
            out.append(
                _Action(frozenset(_list(when.get("rule"))), frozenset(_list(when.get("family"))), severities, do)
            )
        limit = doc.get("max_actions_per_hour", 10)
        if not isinstance(limit, int) or limit < 0:
            raise RuleError("max_actions_per_hour is a non-negative integer")
        return cls(tuple(out), limit)

    def decide(self, alert: Alert) -> list[tuple[str, str]]:
        """The (hold kind, target) pairs an alert calls for, from its entities only."""
        wanted: list[str] = []
        for action in self.actions:
            if action.applies(alert):
                wanted.extend(a for a in action.actions if a not in wanted)
        out: list[tuple[str, str]] = []
        for name in wanted:
            kind, entity = ACTIONS[name]
            values: Sequence[str] = getattr(alert.entities, entity)
            if kind == "model":
                values = sorted({v.split("@", 1)[0] for v in values if "/models/" in v})
            out.extend((kind, v) for v in list(values)[:_MAX_TARGETS])
        return out


def _list(value: object) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


@dataclass
class LiveCounters:
    polls: int = 0
    entries: int = 0
    verify_failures: int = 0
    unavailable: int = 0
    alerts_posted: int = 0
    alert_errors: int = 0
    holds: int = 0
    hold_refused: int = 0
    hold_skipped_rate: int = 0
    #: seconds from an event's ``ts`` to its alert being recorded, and from the alert to its holds
    event_to_alert_s: list[float] = field(default_factory=list)
    alert_to_hold_s: list[float] = field(default_factory=list)


class LiveSentinel:
    """One follower, one engine, one responder, one state file."""

    def __init__(
        self,
        engine: Sentinel,
        follower: TileFollower,
        responder: Responder | None,
        policy: ContainmentPolicy,
        *,
        state_path: Path | None = None,
        max_quiet_s: float = 3600.0,
        save_every_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        on_alert: Callable[[Alert, int | None], None] | None = None,
    ) -> None:
        self.engine = engine
        self.follower = follower
        self.responder = responder
        self.policy = policy
        self.state_path = state_path
        self.max_quiet_s = max_quiet_s
        self.save_every_s = save_every_s
        self.clock = clock
        self._saved = float("-inf")
        self.on_alert = on_alert
        self.counters = LiveCounters()
        self._last_growth = clock()
        self._stalled = False
        self._actions: list[float] = []
        self._skip_below = 0
        self._unsent: list[Alert] = []

    def load_state(self) -> None:
        """Continue from the state file, if there is one: the engine's state and the log position.

        The follower re-verifies the log from the start (its compact range is not stored), but
        entries below the stored position are not fed to the engine again.
        """
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            doc = parse_json_object(
                self.state_path.read_bytes(), f"{self.state_path}: not a sentinel state file", RuleError
            )
        except OSError as exc:
            raise RuleError(f"{self.state_path}: not a sentinel state file ({exc})") from exc
        self.engine.load(doc)
        self._skip_below = int(doc.get("next_index") or 0)

    def save_state(self) -> None:
        self._saved = self.clock()
        if self.state_path is None:
            return
        with atomic_file(self.state_path, overwrite=True, mode=0o600) as handle:
            handle.write(json.dumps(self.engine.to_state(), separators=(",", ":")).encode())

    def poll(self) -> list[Alert]:
        """One round: verify and read the log's growth, detect, record, contain. Never raises for
        bad input or an unreachable broker (counted); a verification failure is alerted."""
        self.counters.polls += 1
        alerts: list[Alert] = []
        try:
            polled = self.follower.poll()
        except AuditLogError as exc:
            self.counters.verify_failures += 1
            alerts.append(self._log_alert("log-verification", f"the log failed verification: {exc}"))
            self._respond(alerts)
            return alerts
        except UnavailableError:
            self.counters.unavailable += 1
            return alerts
        now = self.clock()
        if polled.entries:
            self._last_growth = now
            self._stalled = False
        elif now - self._last_growth > self.max_quiet_s and not self._stalled:
            self._stalled = True
            alerts.append(self._log_alert("log-stalled", f"the log has not grown for {int(now - self._last_growth)} s"))
        for offset, data in enumerate(polled.entries):
            index = polled.start + offset
            if index < self._skip_below:
                continue
            self.counters.entries += 1
            try:
                doc = json.loads(data)  # noqa: TID251 - the hot path: json's speed, and its failures caught
            except (ValueError, RecursionError):
                doc = None
            if isinstance(doc, dict):
                doc["index"] = index
            alerts.extend(self.engine.feed(doc))
        self._respond(alerts)
        # The state holds the learned model's data (megabytes): written when something was
        # read, at most every save_every_s, and on exit.
        if polled.entries and now - self._saved >= self.save_every_s:
            self.save_state()
        return alerts

    def _log_alert(self, rule: str, summary: str) -> Alert:
        return Alert(
            int(self.clock() * 1000), "integrity", rule, "log_tamper", "critical", 1.0, Entities("*"), (), summary
        )

    def _respond(self, alerts: list[Alert]) -> None:
        # Alerts the broker could not take last time go first, in order: none is dropped
        # because the broker was briefly unreachable (they are kept in memory, at most 10,000).
        waiting, self._unsent = self._unsent, []
        for alert in [*waiting, *alerts]:
            index = None
            if self.responder is not None:
                try:
                    index = self.responder.post_alert(alert.to_json())
                    self.counters.alerts_posted += 1
                    self.counters.event_to_alert_s.append(max(0.0, self.clock() - alert.ts / 1000))
                except UnavailableError:
                    self.counters.alert_errors += 1
                    if len(self._unsent) < 10_000:
                        self._unsent.append(alert)
                    continue
                except WeightVaultError:
                    self.counters.alert_errors += 1
            if self.on_alert is not None:
                self.on_alert(alert, index)
            if index is not None:
                self._contain(alert, index)

    def _contain(self, alert: Alert, index: int) -> None:
        assert self.responder is not None
        started = self.clock()
        self._actions = [t for t in self._actions if started - t < 3600]
        for kind, target in self.policy.decide(alert):
            if len(self._actions) >= self.policy.max_per_hour:
                self.counters.hold_skipped_rate += 1
                continue
            try:
                self.responder.hold(kind, target, rule=alert.rule, alert_index=index)
            except WeightVaultError:
                self.counters.hold_refused += 1
                continue
            self._actions.append(started)
            self.counters.holds += 1
            self.counters.alert_to_hold_s.append(self.clock() - started)
