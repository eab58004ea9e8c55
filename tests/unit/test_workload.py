"""The demo's workload: realistic, reproducible, and with every planted trouble in it."""

from __future__ import annotations

from collections import Counter

import pytest

from queues.envelope import open_envelope
from queues.errors import EnvelopeError
from queues.keys import KeyRegistry, ProducerKey
from workers.workload import PRODUCER_TYPES, build_workload, seal_job


@pytest.fixture(scope="module")
def keys() -> KeyRegistry:
    return KeyRegistry(ProducerKey.generate(p, t) for p, t in PRODUCER_TYPES.items())


def test_the_same_seed_builds_the_same_workload() -> None:
    first, second = build_workload(200, seed=3), build_workload(200, seed=3)
    assert [j.message_id for j in first.stream] == [j.message_id for j in second.stream]
    assert first.messages >= 200


def test_every_envelope_opens_except_the_planted_bad_ones(keys: KeyRegistry) -> None:
    workload = build_workload(300, seed=5)
    refused: Counter[str] = Counter()
    for job in [*workload.stream, *(d.job for d in workload.deferred)]:
        try:
            open_envelope(seal_job(job, keys).body, keys)
        except EnvelopeError as exc:
            assert job.planned == exc.reason
            refused[exc.reason] += 1
    assert refused == {"authentication_failed": 1, "not_authorized": 1, "invalid_payload": 1}
    assert workload.planned_dead == {**refused, "illegal_transition": 1}


def test_re_sends_repeat_a_message_id_later_in_the_stream() -> None:
    workload = build_workload(600, seed=9)
    positions: dict[object, list[int]] = {}
    for index, job in enumerate(workload.stream):
        positions.setdefault(job.message_id, []).append(index)
    repeated = {m for m, p in positions.items() if len(p) > 1}
    assert repeated == set(workload.resent_ids) and len(repeated) >= 2


def test_each_producer_sends_only_what_its_key_grants(keys: KeyRegistry) -> None:
    workload = build_workload(300, seed=11)
    for job in workload.stream:
        if job.planned != "not_authorized":
            assert keys.sealing_key(job.producer).may_send(job.message_type), job
    assert "payment-gateway" not in {j.producer for j in workload.stream}
