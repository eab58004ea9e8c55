"""The network element port: state-setting, idempotent calls, and its HTTP adapter.

Each call sets a state (``active``, ``suspended``, ``terminated``) rather than toggling one, and
carries an idempotency key (the message id): repeating a call — a redelivery, a retry after a lost
response — is harmless. Handlers call it with no database transaction open.

Retry budget of ``HttpNetworkElement`` (tenacity, second-scale blips only; the broker's retry
tiers cover the long horizon). Worst case, with the defaults::

    attempts × timeout_s + Σ backoff  =  4 × 2 s + (0.2 + 0.4 + 0.8 s + jitter ≤ 3 × 0.2 s)  ≈ 10 s

and ``budget_s`` stops retrying once that much time has passed, whatever the attempt count. Keep it
well under the actor's time limit.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, Self

import httpx
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from handlers.errors import NetworkRejected, NetworkUnavailable

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({409, 429})


class NetworkElement(Protocol):
    """The subscriber network: every call sets a state and is idempotent per ``idempotency_key``.

    Raises (every method):
        NetworkRejected: the element refused the request; retrying cannot help.
        NetworkUnavailable: the element did not answer usefully within the retry budget.
    """

    def activate(
        self,
        service_id: uuid.UUID,
        *,
        msisdn: str,
        iccid: str,
        plan_code: str,
        idempotency_key: str,
    ) -> None:
        """Make the service active with this SIM, number and plan."""

    def suspend(self, service_id: uuid.UUID, *, reason: str, idempotency_key: str) -> None:
        """Make the service suspended."""

    def resume(self, service_id: uuid.UUID, *, idempotency_key: str) -> None:
        """Make the service active again."""

    def terminate(self, service_id: uuid.UUID, *, reason: str, idempotency_key: str) -> None:
        """Make the service terminated, for good."""


class _Retryable(Exception):
    """An answer worth another attempt (5xx, 409, 429); carries only the status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class HttpNetworkElement:
    """The network element over HTTP, with bounded, jittered retries (tenacity).

    ``POST {base_url}/services/{service_id}/{activate|suspend|resume|terminate}`` with a JSON body
    and an ``Idempotency-Key`` header. 2xx ▶ done; connection errors, timeouts, 5xx, 409 (the same
    key is still being processed) and 429 ▶ retried; other 4xx ▶ ``NetworkRejected``; retries
    exhausted ▶ ``NetworkUnavailable``. One instance per process; it is thread-safe.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 2.0,
        attempts: int = 4,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 2.0,
        jitter_s: float = 0.2,
        budget_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.attempts = attempts
        self.budget_s = budget_s
        # exponential + additive jitter; spelled out because tenacity's wait_exponential_jitter
        # renamed its arguments within 9.x (``initial`` ▶ ``multiplier``, with a warning).
        self._wait = wait_exponential(
            multiplier=backoff_initial_s, max=backoff_max_s
        ) + wait_random(0, jitter_s)
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            headers={"User-Agent": "telco-fleet"},
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def activate(
        self,
        service_id: uuid.UUID,
        *,
        msisdn: str,
        iccid: str,
        plan_code: str,
        idempotency_key: str,
    ) -> None:
        body = {"msisdn": msisdn, "iccid": iccid, "plan_code": plan_code}
        self._call(service_id, "activate", body, idempotency_key)

    def suspend(self, service_id: uuid.UUID, *, reason: str, idempotency_key: str) -> None:
        self._call(service_id, "suspend", {"reason": reason}, idempotency_key)

    def resume(self, service_id: uuid.UUID, *, idempotency_key: str) -> None:
        self._call(service_id, "resume", {}, idempotency_key)

    def terminate(self, service_id: uuid.UUID, *, reason: str, idempotency_key: str) -> None:
        self._call(service_id, "terminate", {"reason": reason}, idempotency_key)

    def _call(
        self, service_id: uuid.UUID, operation: str, body: dict[str, Any], idempotency_key: str
    ) -> None:
        retrying = Retrying(
            retry=retry_if_exception_type((_Retryable, httpx.TransportError)),
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.budget_s),
            wait=self._wait,
            before_sleep=_log_retry(operation),
            sleep=time.sleep,
        )
        url = f"/services/{service_id}/{operation}"
        headers = {"Idempotency-Key": idempotency_key}
        try:
            for attempt in retrying:
                with attempt:
                    response = self._client.post(url, json=body, headers=headers)
                    _raise_for(response, operation)
        except RetryError as exc:
            raise NetworkUnavailable(
                f"network element {operation}: no success after "
                f"{exc.last_attempt.attempt_number} attempts "
                f"(last: {_describe(exc.last_attempt.exception())})"
            ) from None


def _raise_for(response: httpx.Response, operation: str) -> None:
    status = response.status_code
    if status < 300:
        return
    if status >= 500 or status in RETRYABLE_STATUSES:
        raise _Retryable(status)
    raise NetworkRejected(f"network element refused {operation}: HTTP {status}")


def _describe(failure: BaseException | None) -> str:
    if isinstance(failure, _Retryable):
        return f"HTTP {failure.status}"
    return type(failure).__name__


def _log_retry(operation: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome is not None else None
        log.info(
            "network element %s: attempt %d failed (%s), retrying",
            operation,
            state.attempt_number,
            _describe(failure),
        )

    return before_sleep
