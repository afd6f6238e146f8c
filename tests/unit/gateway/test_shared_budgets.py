"""Several gateways over one PostgreSQL database share each output budget: what they send together
never exceeds it, whatever the interleaving of their reservations. Runs in the
``--database postgresql`` pass (each gateway has its own store, as separate processes would)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests import databases
from weightvault.broker.storage import BrokerStore, PrincipalRow
from weightvault.gateway.budgets import Budget, Scope, SharedLedger, Unit
from weightvault.gateway.state import Caller, GatewayState, KeyAdmin

MODEL = "acme/models/m@1"
LIMIT = 200_000


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[tuple[list[GatewayState], Caller]]:
    if databases.backend() != "postgresql":
        pytest.skip("gateways share budgets on PostgreSQL: runs in the --database postgresql pass")
    url = databases.fresh_url(tmp_path)
    with ExitStack() as stack:
        admin = BrokerStore(url)
        stack.callback(admin.close)
        admin.migrate(0)
        admin.tenants.create("acme", b"", 0)
        admin.principals.create(PrincipalRow("acme-wl", "acme", "workload", bytes(32), False), 0)
        _, key = KeyAdmin(admin).create("test", "acme", "acme-wl")
        states = []
        for _ in range(4):
            store = BrokerStore(url)
            stack.callback(store.close)
            state = GatewayState(store, [Budget(Scope.KEY, "hour", Unit.BYTES, LIMIT)], {})
            stack.callback(state.close)
            states.append(state)
        yield states, Caller.of(key)


def test_four_gateways_charging_at_once_send_no_more_than_the_budget(
    gateways: tuple[list[GatewayState], Caller],
) -> None:
    states, caller = gateways
    assert all(isinstance(s.ledger, SharedLedger) for s in states)
    sent = [0] * len(states)

    def spend(n: int) -> None:
        state = states[n]
        while True:
            buckets = state.buckets_for(caller, MODEL)  # each request reads the stored levels afresh
            if state.ledger.exhausted(buckets, state.now_ms()) is not None:
                return
            refused, _ = state.ledger.charge(buckets, {Unit.BYTES: 333}, state.now_ms())
            if refused is not None:
                return
            sent[n] += 333

    threads = [threading.Thread(target=spend, args=(n,)) for n in range(len(states))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    total = sum(sent)
    # The hour bucket drains while they run (LIMIT/3600 per second): a few hundred bytes at most.
    assert LIMIT - 4 * 333 < total <= LIMIT + 2 * LIMIT // 3600
    assert all(s > 0 for s in sent)  # every gateway got a share
    for state in states:  # spent for everyone (beyond what drained meanwhile)
        buckets = state.buckets_for(caller, MODEL)
        assert state.ledger.charge(buckets, {Unit.BYTES: 5000}, state.now_ms())[0] == buckets[0]


def test_a_refusal_alerts_once_across_gateways(gateways: tuple[list[GatewayState], Caller]) -> None:
    states, caller = gateways
    a, b = states[0], states[1]
    buckets = a.buckets_for(caller, MODEL)
    assert a.ledger.charge(buckets, {Unit.BYTES: LIMIT}, a.now_ms())[0] is None
    b.buckets_for(caller, MODEL)
    refused, alerts = b.ledger.charge(buckets, {Unit.BYTES: 1000}, b.now_ms())
    assert refused == buckets[0]
    assert [] == alerts  # a already raised 50, 80 and 100% when it reserved the whole budget
