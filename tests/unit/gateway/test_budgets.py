"""Output budgets: leaky buckets, all-or-nothing charges, alerts, and the configuration syntax."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightvault.errors import ConfigError
from weightvault.gateway.budgets import (
    ALLOWANCE_TTL_MS,
    DEFAULT_BUDGETS,
    BucketState,
    Budget,
    Ledger,
    Reservation,
    Scope,
    SharedLedger,
    Unit,
    parse_budget,
    reserve,
)

HOUR = Budget(Scope.KEY, "hour", Unit.BYTES, 1000)
PRINCIPAL = Budget(Scope.PRINCIPAL, "hour", Unit.BYTES, 1500)
TOKENS = Budget(Scope.KEY, "hour", Unit.TOKENS, 10)


def ledger(*budgets: Budget, states: dict[str, BucketState] | None = None) -> tuple[Ledger, list[str]]:
    led = Ledger()
    wanted = {b.bucket_id("s"): (b, "s") for b in budgets}
    led.load(wanted, states or {})
    return led, list(wanted)


def test_rand_sl3_defaults_per_key_principal_and_tenant() -> None:
    limits = {(b.scope, b.window): b.limit for b in DEFAULT_BUDGETS}
    for scope in (Scope.KEY, Scope.PRINCIPAL, Scope.TENANT):
        assert (400_000, 1_000_000_000) == (limits[(scope, "hour")], limits[(scope, "month")])


def test_a_charge_is_all_or_nothing_across_buckets() -> None:
    led, ids = ledger(HOUR, PRINCIPAL)
    assert (None, []) == (led.charge(ids, {Unit.BYTES: 400}, 0)[0], [])
    refused, _ = led.charge(ids, {Unit.BYTES: 601}, 0)
    assert refused == HOUR.bucket_id("s")
    assert [600, 1100] == [led.remaining(i, 0) for i in ids]  # neither bucket moved


def test_spending_drains_at_the_limit_per_period() -> None:
    led, ids = ledger(HOUR)
    assert led.charge(ids, {Unit.BYTES: 1000}, 0)[0] is None
    assert led.exhausted(ids, 0) == ids[0]
    assert 500 == led.remaining(ids[0], 1_800_000)  # half an hour later, half the budget is back
    assert 1000 == led.remaining(ids[0], 7_200_000)


def test_units_are_charged_only_to_their_buckets() -> None:
    led, ids = ledger(HOUR, TOKENS)
    assert led.charge(ids, {Unit.BYTES: 900}, 0)[0] is None
    assert led.charge(ids, {Unit.TOKENS: 10}, 0)[0] is None
    assert led.charge(ids, {Unit.TOKENS: 1}, 0)[0] == TOKENS.bucket_id("s")


def test_alerts_once_at_50_80_and_100_percent_and_again_after_draining() -> None:
    led, ids = ledger(HOUR)
    raised: list[int] = []
    for _ in range(10):
        raised += [a.threshold for a in led.charge(ids, {Unit.BYTES: 100}, 0)[1]]
    assert [50, 80, 100] == raised
    assert [] == led.refuse(ids[0], 0)  # 100% was raised already
    assert [] == led.charge(ids, {Unit.BYTES: 1}, 3_600_000)[1]  # drained: the alert level resets
    assert [50] == [a.threshold for a in led.charge(ids, {Unit.BYTES: 600}, 3_600_000)[1]]


def test_a_refused_charge_raises_the_100_percent_alert() -> None:
    led, ids = ledger(HOUR)
    refused, alerts = led.charge(ids, {Unit.BYTES: 2000}, 0)
    assert refused == ids[0]
    assert [100] == [a.threshold for a in alerts]


def test_stored_state_is_adopted_and_dirty_buckets_are_handed_over_once() -> None:
    state = BucketState(spent=900.0, updated_ms=0, alerted=80)
    led, ids = ledger(HOUR, states={HOUR.bucket_id("s"): state})
    assert 100 == led.remaining(ids[0], 0)
    led.charge(ids, {Unit.BYTES: 50}, 0)
    assert {ids[0]} == set(led.take_dirty())
    assert {} == led.take_dirty()


@given(st.lists(st.integers(min_value=1, max_value=400), max_size=50))
def test_the_sum_of_accepted_charges_never_exceeds_the_limit(amounts: list[int]) -> None:
    led, ids = ledger(HOUR)
    accepted = sum(a for a in amounts if led.charge(ids, {Unit.BYTES: a}, 0)[0] is None)
    assert accepted <= HOUR.limit


def test_budget_syntax() -> None:
    assert Budget(Scope.PRINCIPAL, "month", Unit.TOKENS, 5) == parse_budget("principal.month.tokens=5")
    for bad in ("key.hour.bytes", "key.week.bytes=1", "user.hour.bytes=1", "key.hour.bytes=-1", "key.hour.bytes=1e6"):
        with pytest.raises(ConfigError):
            parse_budget(bad)


def test_each_model_gets_a_yearly_aggregate_of_one_percent_of_its_effective_size() -> None:
    from weightvault.gateway.main import model_budgets

    got = model_budgets({"a/models/m@1": 11_000_000}, 0.01, [Budget(Scope.KEY, "hour", Unit.BYTES, 5)])
    assert [Budget(Scope.MODEL, "year", Unit.BYTES, 110_000)] == got["a/models/m@1"]
    explicit = Budget(Scope.MODEL, "year", Unit.BYTES, 7)
    assert [explicit] == model_budgets({"a/models/m@1": 11_000_000}, 0.01, [explicit])["a/models/m@1"]


# -- several gateways sharing buckets through reservations ----------------------------------------


class _Store:
    """The shared buckets as a database holds them: :func:`reserve` runs over them atomically."""

    def __init__(self, *budgets: Budget) -> None:
        self.budgets = {b.bucket_id("s"): b for b in budgets}
        self.states: dict[str, BucketState] = {}
        self.now_ms = 0
        self.transactions = 0

    def reserve(self, shortfalls: Mapping[str, float]) -> Reservation:
        self.transactions += 1
        rows = {i: (self.budgets[i], "s", self.states.get(i, BucketState())) for i in shortfalls}
        done, changed = reserve(rows, shortfalls, self.now_ms)
        self.states.update(changed)
        return done

    def gateway(self) -> tuple[SharedLedger, list[str]]:
        led = SharedLedger(self.reserve)
        led.load({i: (b, "s") for i, b in self.budgets.items()}, self.states)
        return led, list(self.budgets)


def test_a_reservation_tops_up_to_one_percent_and_never_past_the_limit() -> None:
    rows = {HOUR.bucket_id("s"): (HOUR, "s", BucketState(990.0, 0, 0))}
    done, changed = reserve(rows, {HOUR.bucket_id("s"): 3.0}, 0)
    assert {HOUR.bucket_id("s"): 10.0} == dict(done.granted)  # 1% of 1000 is 10, and 10 is what is left
    assert 1000.0 == changed[HOUR.bucket_id("s")].spent
    rows = {HOUR.bucket_id("s"): (HOUR, "s", BucketState(0.0, 0, 0))}
    assert {HOUR.bucket_id("s"): 10.0} == dict(reserve(rows, {HOUR.bucket_id("s"): 3.0}, 0)[0].granted)
    assert {HOUR.bucket_id("s"): 400.0} == dict(reserve(rows, {HOUR.bucket_id("s"): 400.0}, 0)[0].granted)


def test_a_reservation_is_all_or_nothing_and_a_refusal_alerts_once() -> None:
    store = _Store(HOUR, PRINCIPAL)
    store.states[PRINCIPAL.bucket_id("s")] = BucketState(1495.0, 0, 80)
    done = store.reserve({HOUR.bucket_id("s"): 10.0, PRINCIPAL.bucket_id("s"): 10.0})
    assert PRINCIPAL.bucket_id("s") == done.refused
    assert {} == dict(done.granted)
    assert HOUR.bucket_id("s") not in store.states or 0 == store.states[HOUR.bucket_id("s")].spent
    assert [100] == [a.threshold for a in done.alerts]
    assert [] == list(store.reserve({PRINCIPAL.bucket_id("s"): 10.0}).alerts)  # once


def test_gateways_send_only_what_they_reserved_and_together_stay_within_the_limit() -> None:
    store = _Store(Budget(Scope.KEY, "hour", Unit.BYTES, 100_000))
    (a, ids), (b, _) = store.gateway(), store.gateway()
    sent = charges = 0
    going = True
    while going:
        going = False
        for led in (a, b):
            if led.charge(ids, {Unit.BYTES: 7}, store.now_ms)[0] is None:
                sent, charges, going = sent + 7, charges + 1, True
    # Each gateway may strand less than one charge of its last reservation: never more is sent.
    assert 100_000 - 2 * 7 < sent <= 100_000
    assert store.transactions < charges / 50  # most charges come out of a reservation, not the database
    fresh, _ = store.gateway()  # a third gateway's first request sees the bucket spent
    assert ids[0] == fresh.exhausted(ids, store.now_ms)


def test_a_reservation_is_dropped_after_its_time_to_live() -> None:
    store = _Store(Budget(Scope.KEY, "month", Unit.BYTES, 1_000_000))
    led, ids = store.gateway()
    assert led.charge(ids, {Unit.BYTES: 1}, 0)[0] is None
    first = store.transactions
    assert led.charge(ids, {Unit.BYTES: 1}, ALLOWANCE_TTL_MS - 1)[0] is None
    assert first == store.transactions  # out of the reservation
    assert led.charge(ids, {Unit.BYTES: 1}, ALLOWANCE_TTL_MS)[0] is None
    assert first + 1 == store.transactions  # expired: reserved again


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 300)), max_size=120))
def test_any_interleaving_of_three_gateways_never_sends_more_than_the_limit(charges: list[tuple[int, int]]) -> None:
    store = _Store(Budget(Scope.KEY, "month", Unit.BYTES, 2000))
    gateways = [store.gateway() for _ in range(3)]
    sent = 0
    for who, amount in charges:
        led, ids = gateways[who]
        if led.charge(ids, {Unit.BYTES: amount}, 0)[0] is None:
            sent += amount
    assert sent <= 2000
