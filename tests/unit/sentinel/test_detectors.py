"""The statistical detectors: PRADA, swarms, the baselines and the learned model's fast scorer."""

from __future__ import annotations

import random

import numpy as np
from sklearn.ensemble import IsolationForest

from weightvault.sentinel.baselines import BaselineMetric, DailyCusum, HourlyRate
from weightvault.sentinel.extraction import PradaTest, SwarmTest, parse_sketch
from weightvault.sentinel.learned import _FastScorer


def _flip(rng: random.Random, value: int, bits: int) -> int:
    for b in rng.sample(range(256), bits):
        value ^= 1 << b
    return value


def test_prada_separates_natural_queries_from_an_extraction_stream() -> None:
    rng = random.Random(1)
    natural = PradaTest()
    assert all(natural.add("k", rng.getrandbits(256)) is None for _ in range(3000))
    seeds = [rng.getrandbits(256) for _ in range(5)]
    attack = PradaTest()
    hits = [attack.add("k", _flip(rng, rng.choice(seeds), rng.randint(1, 10))) for _ in range(400)]
    assert any(w is not None and w < 0.8 for w in hits)


def test_swarm_needs_many_keys_repeating_one_template() -> None:
    rng = random.Random(2)
    swarm = SwarmTest(min_keys=5)
    assert all(swarm.add("t", f"k{i % 40}", rng.getrandbits(256), i * 100) is None for i in range(5000))
    template = rng.getrandbits(256)
    found: set[str] = set()
    for i in range(300):
        found |= swarm.add("t", f"s{i % 8}", _flip(rng, template, rng.randint(4, 16)), 600_000 + i * 100) or set()
    assert found == {f"s{i}" for i in range(8)}
    # the same template in another tenant is another swarm's business
    assert swarm.add("other", "s1", template, 700_000) is None


def test_parse_sketch() -> None:
    assert parse_sketch("simhash256:k1:" + "f" * 64) == (1 << 256) - 1
    for bad in ("simhash256:k1:xyz", "md5:abc", None, 7, "simhash256:k1:" + "g" * 64):
        assert parse_sketch(bad) is None


def test_hourly_rate_waits_for_history_then_alerts_once_an_hour() -> None:
    metric = BaselineMetric("m", "bulk_release", frozenset({"x"}), "actor", floor=5, min_hours=24)
    rate = HourlyRate(0)
    assert all(rate.add(h, 1, metric) is None for h in range(24))
    assert all(rate.add(24, 1, metric) is None for _ in range(4))
    crossed = [rate.add(24, 1, metric) for _ in range(10)]
    assert sum(c is not None for c in crossed) == 1


def test_cusum_catches_a_sustained_rise_that_no_day_makes_obvious() -> None:
    cusum = DailyCusum(0)
    rng = random.Random(3)
    for day in range(20):
        assert cusum.add(day, rng.uniform(90, 110)) is None
    raised = [cusum.add(day, rng.uniform(150, 170)) for day in range(20, 32)]
    assert any(r is not None for r in raised)


def test_fast_scorer_equals_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2000, 15))
    forest = IsolationForest(n_estimators=50, random_state=0).fit(data)
    scorer = _FastScorer.of(forest)
    assert scorer is not None
    probe = rng.normal(size=(300, 15)) * 3
    assert np.allclose(scorer.score(probe), forest.score_samples(probe), atol=1e-12)
