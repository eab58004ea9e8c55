"""The dead-letter headers: one vocabulary, and a publisher's own ``x-fleet-*`` never believed."""

from __future__ import annotations

from queues import deadletter
from queues.deadletter import (
    H_ATTEMPT,
    H_DEATH_ID,
    H_REPLAY_OF,
    H_SUSPECT_DELIVERIES,
    death_id,
    fleet_headers,
    trusted_fleet_headers,
)

HEADER_NAMES = [value for name, value in vars(deadletter).items() if name.startswith("H_")]


def test_every_header_name_is_distinct_and_in_the_fleets_namespace() -> None:
    assert len(HEADER_NAMES) == len(set(HEADER_NAMES))
    assert all(name.startswith(deadletter.PREFIX) for name in HEADER_NAMES)


def test_only_the_fleets_headers_are_picked() -> None:
    headers = {H_ATTEMPT: 3, "x-death": [], "x-delivery-count": 2, "trace-id": "t"}
    assert fleet_headers(headers) == {H_ATTEMPT: 3}


def test_headers_straight_from_a_publisher_are_not_trusted() -> None:
    forged = {H_ATTEMPT: 99, H_DEATH_ID: "forged"}
    assert trusted_fleet_headers(forged, "fleet") == {}


def test_headers_after_a_fleet_hop_are_trusted() -> None:
    ours = {H_ATTEMPT: 2, "x-death": []}
    for exchange in ("fleet.retry", "fleet.dead", "", None):
        assert trusted_fleet_headers(ours, exchange) == {H_ATTEMPT: 2}


def test_one_copy_dies_under_one_id_however_often_it_is_delivered() -> None:
    copy = {H_ATTEMPT: 2}
    first = death_id(b"envelope", copy)
    assert first == death_id(b"envelope", dict(copy))
    # its suspect-lane copy: the same headers, plus the deliveries that made it a suspect
    assert first == death_id(b"envelope", {**copy, H_SUSPECT_DELIVERIES: 3})


def test_a_later_life_of_the_message_dies_under_another_id() -> None:
    first = death_id(b"envelope", {H_ATTEMPT: 2})
    assert death_id(b"envelope", {H_ATTEMPT: 3}) != first  # the next retry's copy
    assert death_id(b"envelope", {H_ATTEMPT: 2, H_REPLAY_OF: 7}) != first  # an operator's replay
    assert death_id(b"envelope", {H_ATTEMPT: 2, H_REPLAY_OF: 8}) != death_id(
        b"envelope", {H_ATTEMPT: 2, H_REPLAY_OF: 7}
    )
    assert death_id(b"another envelope", {H_ATTEMPT: 2}) != first
