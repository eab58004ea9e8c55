"""The ratio bench's bookkeeping (bench/ratios.py), without running anything or timing anything."""

from __future__ import annotations

import json
from pathlib import Path

from bench.ratios import (
    PHASES,
    FleetTally,
    Measured,
    baseline_progress,
    goal,
    median_ratio,
    order,
)
from workers.events import EventLog


def test_rounds_rotate_so_that_each_phase_runs_first_once_in_four() -> None:
    rounds = [order(r) for r in range(1, 5)]
    assert all(sorted(phases) == sorted(PHASES) for phases in rounds)
    assert sorted(phases[0] for phases in rounds) == sorted(PHASES)


def test_baseline_completions_are_summed_over_processes_first_to_last(tmp_path: Path) -> None:
    (tmp_path / "101.json").write_text(json.dumps({"count": 3, "first": 10.0, "last": 12.0}))
    (tmp_path / "102.json").write_text(json.dumps({"count": 5, "first": 9.5, "last": 11.0}))
    (tmp_path / "103.json").write_text(json.dumps({"count": 0, "first": 0.0, "last": 0.0}))
    (tmp_path / "104.json").write_text('{"count": 2, "fir')  # being replaced: read next time

    seen = baseline_progress(tmp_path)

    assert (seen.count, seen.first, seen.last) == (8, 9.5, 12.0)


def test_fleet_tally_counts_each_delivery_once_and_only_from_its_own_phase(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"

    def emit(kind: str, message_id: str, queue: str, at: float, **fields: object) -> None:
        line = {"event": kind, "message_id": message_id, "queue": queue, "at": at, **fields}
        with events.open("a") as handle:
            handle.write(json.dumps(line) + "\n")

    emit("ok", "earlier", "billing", 1.0, age_s=9.0)  # an earlier phase's
    tally = FleetTally(EventLog(events, keep_events=False))
    emit("retried", "m1", "billing", 2.0)
    emit("ok", "m1", "billing", 3.0, age_s=0.02)
    emit("ok", "m2", "billing", 4.0, age_s=0.04)
    emit("ok", "m2", "crm", 5.0, age_s=0.05)  # the fanned-out copy: a delivery of its own
    emit("duplicate", "m2", "billing.suspect", 6.0)  # a redelivery of one counted already

    seen = tally.poll()

    assert (seen.count, seen.first, seen.last) == (3, 3.0, 5.0)
    assert tally.ages == [0.02, 0.04, 0.05]
    assert tally.retried().count == 1


def _measured(phase: str, per_s: float) -> Measured:
    return Measured(phase, 1, 100, 1.0, per_s, None, None, 0.0, 0.0, 1.0)


def test_a_ratio_is_the_median_of_the_rounds_ratios() -> None:
    rounds = [
        {"charges": _measured("charges", c), "straightforward": _measured("straightforward", s)}
        for c, s in [(300, 100), (900, 100), (400, 200)]
    ]
    assert median_ratio(rounds, "charges", "straightforward") == 3.0


def test_goals_are_met_from_above_or_from_below_and_never_without_a_value() -> None:
    assert goal("rate", 3.1, 3.0, "×")["met"]
    assert not goal("rate", 2.9, 3.0, "×")["met"]
    assert goal("age", 0.04, 0.05, "s", at_most=True)["met"]
    assert not goal("age", 0.06, 0.05, "s", at_most=True)["met"]
    assert not goal("age", None, 0.05, "s", at_most=True)["met"]
