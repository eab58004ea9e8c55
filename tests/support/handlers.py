"""Handing opened messages to the bus in tests, with an in-memory network element."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from handlers.bus import Outcome, handle
from handlers.store.uow import UnitOfWork
from queues.contracts import Contract
from queues.envelope import EnvelopeHeader

UowFactory = Callable[[], UnitOfWork]


class FakeNetwork:
    """An in-memory network element: records calls, replays repeated idempotency keys."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, uuid.UUID, str]] = []
        self.states: dict[uuid.UUID, str] = {}
        self.failure: Exception | None = None
        self.during_call: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def _set(self, operation: str, service_id: uuid.UUID, key: str, state: str) -> None:
        with self._lock:
            self.calls.append((operation, service_id, key))
        if self.failure is not None:
            raise self.failure
        if self.during_call is not None:
            during, self.during_call = self.during_call, None
            during()
        self.states[service_id] = state

    def activate(
        self,
        service_id: uuid.UUID,
        *,
        msisdn: str,
        iccid: str,
        plan_code: str,
        idempotency_key: str,
    ) -> None:
        self._set("activate", service_id, idempotency_key, "active")

    def suspend(self, service_id: uuid.UUID, *, reason: str, idempotency_key: str) -> None:
        self._set("suspend", service_id, idempotency_key, "suspended")

    def resume(self, service_id: uuid.UUID, *, idempotency_key: str) -> None:
        self._set("resume", service_id, idempotency_key, "active")

    def terminate(self, service_id: uuid.UUID, *, reason: str, idempotency_key: str) -> None:
        self._set("terminate", service_id, idempotency_key, "terminated")

    def calls_for(self, service_id: uuid.UUID) -> list[str]:
        return [operation for operation, sid, _ in self.calls if sid == service_id]


class Deliver:
    """Hands one opened message to the bus, as the worker's actor will."""

    def __init__(self, uow_factory: UowFactory, network: FakeNetwork) -> None:
        self.uow_factory = uow_factory
        self.network = network

    def __call__(
        self,
        queue: str,
        payload: Contract,
        message_id: uuid.UUID | None = None,
        correlation_id: uuid.UUID | None = None,
        **options: Any,
    ) -> Outcome:
        header = EnvelopeHeader(
            alg="dir",
            enc="A256GCM",
            kid="test-kid",
            message_id=message_id or uuid.uuid4(),
            message_type=payload.message_type,
            schema_version=payload.schema_version,
            producer="fleet",
            created_at=datetime.now(UTC),
            correlation_id=correlation_id,
            entity_version=payload.header_entity_version(),
        )
        options.setdefault("uow_factory", self.uow_factory)
        return handle(queue, header.message_id, header, payload, network=self.network, **options)
