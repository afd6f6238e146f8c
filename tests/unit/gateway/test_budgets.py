"""Output budgets: leaky buckets, all-or-nothing charges, alerts, and the configuration syntax."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightvault.errors import ConfigError
from weightvault.gateway.budgets import DEFAULT_BUDGETS, BucketState, Budget, Ledger, Scope, Unit, parse_budget

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
