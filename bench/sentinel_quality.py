"""Sentinel quality over several simulated scenarios: the per-family table of docs/sentinel.md.

For each seed: ``simulate`` (profile ``holdout`` by default, which the detectors were not
tuned on), replay with every detector, score with the evaluator; then the incidents,
detections, false alerts and benign entity-days are summed over seeds, and times to
detect pooled. Also the recall each detector kind reaches alone.

    python bench/sentinel_quality.py [--profile holdout] [--seeds 201-205] [--days 28]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from typing import Any


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(x) for x in text.split(",")]


def _q(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]:.0f}"


def main() -> None:
    from weightvault.sentinel.engine import Sentinel, default_config
    from weightvault.sentinel.evaluate import benign_entity_days, evaluate, parse_labels
    from weightvault.sentinel.simulate import simulate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="holdout")
    parser.add_argument("--seeds", default="201-205")
    parser.add_argument("--days", type=int, default=28)
    args = parser.parse_args()

    fam: dict[str, dict[str, Any]] = defaultdict(lambda: {"n": 0, "hit": 0, "fa": 0, "ttd": []})
    by_detector: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    totals = {"n": 0, "hit": 0, "alerts": 0, "match": 0, "fa": 0, "days": 0, "events": 0}
    for seed in _seeds(args.seeds):
        scenario = simulate(seed, days=args.days, profile=args.profile)
        lines = scenario.events_jsonl().splitlines()
        engine = Sentinel(default_config())
        alerts = [a.to_json() for line in lines for a in engine.feed_line(line)]
        alerts += [a.to_json() for a in engine.finish()]
        incidents, _ = parse_labels(scenario.labels_jsonl().splitlines())
        days, _ = benign_entity_days(lines, incidents)
        report = evaluate(alerts, incidents, days)
        doc = report.to_json()
        print(
            f"seed {seed}: {len(lines)} events, {doc['incidents']} incidents, recall {doc['recall']}, "
            f"{doc['false_alerts']} false alerts / {days} benign entity-days, missed {doc['missed']}"
        )
        totals["n"] += report.incidents
        totals["hit"] += report.detected
        totals["alerts"] += report.alerts
        totals["match"] += report.matching_alerts
        totals["fa"] += report.false_alerts
        totals["days"] += days
        totals["events"] += len(lines)
        for name, score in report.families.items():
            f = fam[name]
            f["n"] += score.incidents
            f["hit"] += score.detected
            f["fa"] += score.false_alerts
            f["ttd"] += [t / 1000 for t in score.ttd_ms]
        for detector in ("rules", "baseline", "learned", "extraction", "integrity"):
            alone = evaluate([a for a in alerts if a["detector"] == detector], incidents, days)
            by_detector[detector][0] += alone.detected
            by_detector[detector][1] += alone.false_alerts

    print()
    print("| family | incidents | detected | recall | false alerts | TTD p50 s | TTD p90 s |")
    print("|---|---|---|---|---|---|---|")
    for name in sorted(fam):
        f = fam[name]
        recall = f"{f['hit'] / f['n']:.2f}" if f["n"] else "-"
        print(f"| {name} | {f['n']} | {f['hit']} | {recall} | {f['fa']} | {_q(f['ttd'], 0.5)} | {_q(f['ttd'], 0.9)} |")
    all_ttd = [t for f in fam.values() for t in f["ttd"]]
    per_k = 1000 * totals["fa"] / totals["days"]
    print(
        f"| **all** | {totals['n']} | {totals['hit']} | {totals['hit'] / totals['n']:.3f} | {totals['fa']} "
        f"| {_q(all_ttd, 0.5)} | {_q(all_ttd, 0.9)} |"
    )
    print()
    print(
        f"{totals['events']} events; {totals['alerts']} alerts, precision {totals['match'] / totals['alerts']:.3f}; "
        f"{totals['fa']} false alerts over {totals['days']} benign entity-days = {per_k:.2f} per 1,000 "
        f"({per_k / 10:.2f}% of entity-days); median TTD {statistics.median(all_ttd):.0f} s"
    )
    print("each detector alone (incidents detected, false alerts):")
    for detector, (hit, fa) in by_detector.items():
        print(f"  {detector:<10} {hit:>3}/{totals['n']} detected, {fa} false alerts")


if __name__ == "__main__":
    main()
