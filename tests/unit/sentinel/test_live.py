"""The live sentinel against a real log: split views and stalls are alerted, alerts lead to holds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.unit.auditlog.test_follower import LOG_KEY, NO_WITNESS, fill, served
from weightvault.auditlog import AuditEvent, AuditLog
from weightvault.auditlog.follower import TileFollower
from weightvault.errors import PermissionDeniedError, TransportError
from weightvault.sentinel.engine import Sentinel, default_config
from weightvault.sentinel.live import ContainmentPolicy, LiveSentinel


class FakeBroker:
    def __init__(self, refuse: bool = False) -> None:
        self.alerts: list[Mapping[str, Any]] = []
        self.holds: list[tuple[str, str, int | None]] = []
        self.refuse = refuse

    def post_alert(self, alert: Mapping[str, Any]) -> int:
        self.alerts.append(alert)
        return 1000 + len(self.alerts)

    def hold(self, kind: str, target: str, *, rule: str, alert_index: int | None = None) -> str:
        if self.refuse:
            raise PermissionDeniedError("not allowed")
        self.holds.append((kind, target, alert_index))
        return "h"


POLICY = ContainmentPolicy.parse(
    {"max_actions_per_hour": 3, "actions": [{"when": {"severity": ["critical"]}, "do": ["freeze_principal"]}]}
)


def _live(fetch: Callable[[str], bytes | None], broker: FakeBroker, now: list[float], tmp: Path) -> LiveSentinel:
    follower = TileFollower(fetch, LOG_KEY.verifier, NO_WITNESS, clock=lambda: now[0])
    return LiveSentinel(
        Sentinel(default_config(learned=False)),
        follower,
        broker,
        POLICY,
        state_path=tmp / "state.json",
        max_quiet_s=60,
        clock=lambda: now[0],
    )


def _decoy(log: AuditLog, touches: int) -> None:
    log.append(
        AuditEvent(
            type="model.register.intent",
            tenant="acme",
            actor="pub",
            resource="acme/models/trap@1",
            details={"tags": {"honeypot": "true"}},
        )
    )
    for i in range(touches):
        log.append(AuditEvent(type="object.read", tenant="acme", actor=f"wl-{i}", resource="acme/models/trap@1"))
    log.wait_published(log.size)


def test_alerts_lead_to_holds_within_the_hourly_limit_and_a_stall_is_alerted(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    broker = FakeBroker()
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=lambda: now[0]) as log:
        fill(log, 0, 3)
        _decoy(log, 5)
        live = _live(served(log), broker, now, tmp_path)
        alerts = live.poll()
        assert [a.rule for a in alerts] == ["honeypot-touch"] * 5
        assert [h[:2] for h in broker.holds] == [("principal", f"wl-{i}") for i in range(3)]
        assert live.counters.hold_skipped_rate == 2  # the sentinel's own hourly limit
        assert broker.holds[0][2] == 1001  # each hold cites its alert's log index
        assert live.poll() == []
        now[0] += 61
        stalled = live.poll()
        assert [(a.rule, a.family) for a in stalled] == [("log-stalled", "log_tamper")]
        assert live.poll() == []  # once per stall
    # a restart on the saved state raises nothing twice
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=lambda: now[0]) as log:
        again = _live(served(log), FakeBroker(), now, tmp_path)
        again.load_state()
        assert again.poll() == []


def test_a_split_view_is_alerted_and_nothing_unverified_is_read(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    broker = FakeBroker(refuse=True)
    with (
        AuditLog(tmp_path / "a" / "audit.db", LOG_KEY, clock=lambda: now[0]) as honest,
        AuditLog(tmp_path / "b" / "audit.db", LOG_KEY, clock=lambda: now[0]) as forked,
    ):
        fill(honest, 0, 4)
        fill(forked, 50, 4)
        _decoy(forked, 1)
        source = {"log": served(honest)}

        def fetch(path: str) -> bytes | None:  # the server switches to the fork below
            return source["log"](path)

        live = _live(fetch, broker, now, tmp_path)
        assert live.poll() == []
        source["log"] = served(forked)
        alerts = live.poll()
        assert [(a.rule, a.family, a.severity) for a in alerts] == [("log-verification", "log_tamper", "critical")]
        assert live.counters.verify_failures == 1
        assert live.counters.entries == 4  # the forked entries (with a decoy touch) were never fed
        assert broker.holds == []


class FlakyBroker(FakeBroker):
    """Unreachable for its first ``down`` calls."""

    def __init__(self, down: int) -> None:
        super().__init__()
        self.down = down

    def post_alert(self, alert: Mapping[str, Any]) -> int:
        if self.down:
            self.down -= 1
            raise TransportError("broker unreachable")
        return super().post_alert(alert)


def test_alerts_wait_for_an_unreachable_broker(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    broker = FlakyBroker(down=1)
    with AuditLog(tmp_path / "audit.db", LOG_KEY, clock=lambda: now[0]) as log:
        _decoy(log, 1)
        live = _live(served(log), broker, now, tmp_path)
        assert [a.rule for a in live.poll()] == ["honeypot-touch"]
        assert broker.alerts == []
        assert live.counters.alert_errors == 1
        live.poll()  # nothing new in the log: the waiting alert goes now
        assert [a["rule"] for a in broker.alerts] == ["honeypot-touch"]
        assert broker.holds == [("principal", "wl-0", 1001)]
