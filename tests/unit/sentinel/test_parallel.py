"""A partitioned replay finds what one pass finds (the learned model aside), and its plan is balanced."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from weightvault.sentinel.engine import default_config
from weightvault.sentinel.parallel import assign, scan_file
from weightvault.sentinel.simulate import simulate


def test_two_processes_find_what_one_finds(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(simulate(2, days=15).events_jsonl() + "not json\n")
    config = dataclasses.replace(default_config(), learned=None)
    one, c1 = scan_file(events, config, jobs=1)
    two, c2 = scan_file(events, config, jobs=2)
    assert one
    assert sorted(map(str, one)) == sorted(map(str, two))
    assert c1.index_gap == c2.index_gap > 0  # the removed lines are found by partition 0 alone
    assert c1.bad_event == c2.bad_event == 1
    lines = len(events.read_text().splitlines())
    assert c1.events + c1.bad_event == c2.events + c2.bad_event == lines


def test_assignment_is_deterministic_and_balanced() -> None:
    counts = {b"a": 50, b"b": 20, b"c": 18, b"d": 12}
    plan = assign(counts, 2)
    assert plan == assign(dict(reversed(list(counts.items()))), 2)
    loads = [sum(n for t, n in counts.items() if plan[t] == p) for p in (0, 1)]
    assert sorted(loads) == [50, 50]
