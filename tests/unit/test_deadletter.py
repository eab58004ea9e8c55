"""The dead-letter headers: one vocabulary, and a publisher's own ``x-fleet-*`` never believed."""

from __future__ import annotations

from queues import deadletter
from queues.deadletter import H_ATTEMPT, H_DEATH_ID, fleet_headers, trusted_fleet_headers

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
