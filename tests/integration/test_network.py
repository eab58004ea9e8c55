"""The network element adapter against the simulator, a real HTTP server on a free port."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from handlers.errors import NetworkRejected, NetworkUnavailable
from handlers.network import HttpNetworkElement
from handlers.network_sim import NetworkSimulatorServer, SimulatedNetwork, serve_in_thread
from queues.errors import PermanentError, TransientError
from tests.support.factories import iccid, msisdn
from tests.support.polling import poll
from tests.support.sleeps import record_sleeps


@pytest.fixture
def simulator() -> Iterator[NetworkSimulatorServer]:
    server, thread = serve_in_thread(SimulatedNetwork(seed=7))
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _element(url: str, **options: Any) -> HttpNetworkElement:
    options = {
        "timeout_s": 1.0,
        "attempts": 4,
        "backoff_initial_s": 0.01,
        "jitter_s": 0.01,
        **options,
    }
    return HttpNetworkElement(url, **options)


def _activate(element: HttpNetworkElement, service_id: uuid.UUID, key: str) -> None:
    element.activate(
        service_id, msisdn=msisdn(), iccid=iccid(), plan_code="MOBILE_M", idempotency_key=key
    )


def _get(server: NetworkSimulatorServer, path: str) -> tuple[int, Any]:
    response = httpx.get(server.url + path, timeout=5)
    return response.status_code, response.json()


def test_transient_503s_are_retried_and_the_activation_applies_once(
    simulator: NetworkSimulatorServer,
) -> None:
    simulator.network.control({"fail_next": 2})
    service_id = uuid.uuid4()
    with _element(simulator.url) as element:
        _activate(element, service_id, str(uuid.uuid4()))

    assert _get(simulator, f"/state/{service_id}")[1]["state"] == "active"
    assert _get(simulator, "/stats")[1] == {"calls": 3, "applied": 1, "replayed": 0, "failed": 2}


def test_a_lost_response_is_retried_with_the_same_key_and_not_applied_twice(
    simulator: NetworkSimulatorServer,
) -> None:
    simulator.network.control({"lose_next": 1})
    service_id, key = uuid.uuid4(), str(uuid.uuid4())
    with _element(simulator.url) as element:
        element.activate(
            service_id,
            msisdn="+436641234567",
            iccid=iccid(),
            plan_code="MOBILE_M",
            idempotency_key=key,
        )
        # a redelivery of the same message, later: answered from memory
        element.activate(
            service_id,
            msisdn="+436641234567",
            iccid=simulator.network.services[str(service_id)]["iccid"],
            plan_code="MOBILE_M",
            idempotency_key=key,
        )

    status, state = _get(simulator, f"/state/{service_id}")
    assert (status, state["state"], state["transitions"]) == (200, "active", 1)
    stats = _get(simulator, "/stats")[1]
    assert (stats["applied"], stats["calls"]) == (1, 3)
    assert stats["replayed"] == 2


def test_a_network_that_always_fails_is_a_transient_error_after_bounded_attempts_and_time(
    simulator: NetworkSimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator.network.control({"failure_rate": 1.0})
    sleeps = record_sleeps(monkeypatch)
    with (
        _element(simulator.url, attempts=3, backoff_initial_s=0.05, jitter_s=0.05) as element,
        pytest.raises(NetworkUnavailable) as caught,
    ):
        element.suspend(uuid.uuid4(), reason="fraud", idempotency_key=str(uuid.uuid4()))

    assert isinstance(caught.value, TransientError)
    assert caught.value.reason == "network_unavailable"
    assert "3 attempts" in caught.value.message and "HTTP 503" in caught.value.message
    assert _get(simulator, "/stats")[1]["calls"] == 3
    # Bounded time: one backoff between attempts, none after the last, each on the exponential
    # schedule (0.05 s, then 0.1 s) plus at most 0.05 s of jitter.
    assert len(sleeps) == 2, sleeps
    for n, slept in enumerate(sleeps):
        assert 0.05 * 2**n <= slept <= 0.05 * 2**n + 0.05, sleeps


def test_the_retry_budget_bounds_time_even_with_attempts_to_spare(
    simulator: NetworkSimulatorServer,
) -> None:
    simulator.network.control({"latency_ms": 300})
    with (
        _element(simulator.url, timeout_s=0.1, attempts=50, budget_s=0.5) as element,
        pytest.raises(NetworkUnavailable, match="ReadTimeout") as caught,
    ):
        element.resume(uuid.uuid4(), idempotency_key=str(uuid.uuid4()))

    attempts = re.search(r"after (\d+) attempts", caught.value.message)
    assert attempts, caught.value.message
    made = int(attempts[1])
    # Every attempt lasts at least its 0.1 s timeout, so a 0.5 s budget leaves room for at most
    # 0.5 / 0.1 + 1 of the 50 attempts: the budget, not the attempt count, stopped the retries.
    assert 1 <= made <= 6, caught.value.message
    # ... and each of them was a real call that reached the element (answered too late).
    poll(lambda: _get(simulator, "/stats")[1]["calls"] == made, 10, f"{made} calls")


def test_a_refused_connection_is_retried_then_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (
        _element(f"http://127.0.0.1:{port}", attempts=2) as element,
        pytest.raises(NetworkUnavailable, match="ConnectError"),
    ):
        element.terminate(uuid.uuid4(), reason="port_out", idempotency_key=str(uuid.uuid4()))


def test_a_400_is_a_permanent_error_and_not_retried(simulator: NetworkSimulatorServer) -> None:
    with _element(simulator.url) as element, pytest.raises(NetworkRejected) as caught:
        _activate(element, uuid.uuid4(), key="")  # the simulator requires a key: 400
    assert isinstance(caught.value, PermanentError)
    assert caught.value.reason == "network_rejected"
    assert "HTTP 400" in caught.value.message
    assert _get(simulator, "/stats")[1]["calls"] == 1


def test_the_element_refuses_transitions_of_unknown_and_terminated_services(
    simulator: NetworkSimulatorServer,
) -> None:
    service_id = uuid.uuid4()
    with _element(simulator.url) as element:
        with pytest.raises(NetworkRejected, match="HTTP 404"):
            element.suspend(service_id, reason="fraud", idempotency_key=str(uuid.uuid4()))
        _activate(element, service_id, str(uuid.uuid4()))
        element.terminate(service_id, reason="port_out", idempotency_key=str(uuid.uuid4()))
        with pytest.raises(NetworkRejected, match="HTTP 422"):
            element.resume(service_id, idempotency_key=str(uuid.uuid4()))
    assert _get(simulator, f"/state/{service_id}")[1]["state"] == "terminated"


@pytest.mark.parametrize("status", [409, 429, 500, 502])
def test_retryable_statuses_are_retried(status: int) -> None:
    answers = iter([status, status, 200])
    seen_keys: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen_keys.append(request.headers.get("Idempotency-Key"))
        return httpx.Response(next(answers), json={})

    element = _element("http://ne.test", transport=httpx.MockTransport(answer))
    element.resume(uuid.uuid4(), idempotency_key="key-1")
    assert seen_keys == ["key-1"] * 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_client_errors_are_rejected_at_once(status: int) -> None:
    calls: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status, json={"error": "no"})

    element = _element("http://ne.test", transport=httpx.MockTransport(answer))
    with pytest.raises(NetworkRejected, match=f"HTTP {status}"):
        element.resume(uuid.uuid4(), idempotency_key="key-1")
    assert len(calls) == 1


def test_a_reused_key_for_another_request_is_refused(simulator: NetworkSimulatorServer) -> None:
    key = str(uuid.uuid4())
    with _element(simulator.url) as element:
        _activate(element, uuid.uuid4(), key)
        with pytest.raises(NetworkRejected, match="HTTP 422"):
            _activate(element, uuid.uuid4(), key)


def test_the_same_seed_gives_the_same_failures() -> None:
    def pattern(seed: int) -> list[int]:
        network = SimulatedNetwork(failure_rate=0.5, seed=seed)
        return [
            network.operate(str(uuid.uuid4()), "terminate", {}, str(uuid.uuid4()))[0]
            for _ in range(40)
        ]

    assert pattern(11) == pattern(11)
    assert pattern(11) != pattern(12)
    assert set(pattern(11)) == {404, 503}


def test_fleet_simulate_network_serves_until_sigterm() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from workers.commands.simulate import app; app()",
            "network",
            "--port",
            str(port),
            "--latency-ms",
            "1",
            "--failure-rate",
            "0",
            "--seed",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )

    def health() -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        except httpx.TransportError:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            return None

    try:
        response = poll(health, 20, "the simulator to come up")
        assert response.json() == {"ok": True}
        stats = json.loads(httpx.get(f"http://127.0.0.1:{port}/stats", timeout=1).text)
        assert stats["calls"] == 0
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert b"stopped" in stderr
