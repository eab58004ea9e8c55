"""A dead-letter stack for tests: scratch vhost + topology, migrated schema, keys, the real
lifecycle to make dead letters the way workers make them, the archiver, and the CLIs."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
from click.testing import Result
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from dlq.archiver import Archiver
from queues.contracts import Contract
from queues.envelope import OpenedMessage, SealedMessage, seal
from queues.keys import KeyRegistry, ProducerKey
from queues.publisher import Outgoing, Publisher
from queues.topology import TopologyConfig, tier_name
from tests.conftest import PRODUCER_TYPES
from tests.support.broker_state import queue_depth, take
from tests.support.db import DATABASE_URL, migrated_schema
from tests.support.rabbit import amqp_url, scratch_vhost
from workers.broker import Delivery
from workers.commands.dlq import app as dlq_app
from workers.commands.dlq import retry_app
from workers.events import EventSink
from workers.lifecycle import Lifecycle, RetryPolicy
from workers.settings import get_settings


@dataclass
class DlqStack:
    url: str
    vhost: str
    engine: Engine
    schema: str
    keys: KeyRegistry
    keys_file: Path
    env: dict[str, str]
    tiers: tuple[int, ...]
    _publisher: Publisher | None = None
    _errors: dict[str, BaseException] = field(default_factory=dict)

    # -- publishing ----------------------------------------------------------------------------

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = Publisher(self.url)
        return self._publisher

    def seal(self, payload: Contract, producer: str = "fleet", **options: Any) -> SealedMessage:
        return seal(payload, self.keys.sealing_key(producer), **options)

    def publish(self, out: Outgoing) -> None:
        [result] = self.publisher.publish_raw([out])
        assert result.ok, result

    def lifecycle(self, max_attempts: int = 3) -> Lifecycle:
        def apply(_queue: str, opened: OpenedMessage) -> str:
            raise self._errors[str(opened.header.message_id)]

        return Lifecycle(
            keys=self.keys,
            publisher=self.publisher,
            apply=apply,
            policy=RetryPolicy(
                tiers=tuple((tier_name(s), s) for s in self.tiers), max_attempts=max_attempts
            ),
            events=EventSink(None),
            max_body_bytes=256 * 1024,
        )

    def kill(
        self,
        body: bytes,
        message_type: str,
        message_id: str,
        *,
        error: BaseException | None = None,
        queue: str = "billing",
        attempt: int = 1,
        exchange: str = "fleet",
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Run one delivery through the real lifecycle so that it dead-letters like in a worker
        (``error`` is what the handler raises; envelope failures need none)."""
        if error is not None:
            self._errors[message_id] = error
        fleet_headers = dict(headers or {})
        if attempt > 1:
            exchange = ""  # back from a retry tier: the lifecycle trusts x-fleet-* then
            fleet_headers.setdefault("x-fleet-attempt", attempt)
            fleet_headers.setdefault(
                "x-fleet-first-failure", datetime.now(UTC).isoformat().replace("+00:00", "Z")
            )
        delivery = Delivery(
            queue=queue,
            body=body,
            exchange=exchange,
            routing_key=message_type if exchange == "fleet" else queue,
            redelivered=False,
            headers=fleet_headers,
            message_id=message_id,
            message_type=message_type,
            content_type="application/jose",
        )
        self.lifecycle(max_attempts=attempt if attempt > 1 else 3).process(delivery)
        assert delivery.settlement is not None and delivery.settlement.value == "ack", delivery

    def kill_payload(
        self,
        payload: Contract,
        error: BaseException,
        *,
        producer: str = "fleet",
        queue: str | None = None,
        attempt: int = 1,
    ) -> str:
        sealed = self.seal(payload, producer)
        message_id = str(sealed.message_id)
        self.kill(
            sealed.body,
            payload.message_type,
            message_id,
            error=error,
            queue=queue or payload.message_type.split(".")[0],
            attempt=attempt,
        )
        return message_id

    # -- the broker ----------------------------------------------------------------------------

    def depth(self, queue: str) -> int:
        return queue_depth(self.url, queue)

    def take(self, queue: str) -> list[tuple[Any, bytes]]:
        """Consume (ack) everything in ``queue``: (properties, body) pairs."""
        return list(take(self.url, queue))

    def purge(self, *queues: str) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            channel = connection.channel()
            for queue in queues:
                channel.queue_purge(queue)
        finally:
            connection.close()

    def archive(self, idle_s: float = 0.6) -> Archiver:
        archiver = Archiver(self.url, self.engine, batch_size=50, linger_s=0.05)
        archiver.drain(idle_s=idle_s, timeout_s=60)
        return archiver

    # -- the database --------------------------------------------------------------------------

    def query(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(text(sql), params).all())

    def letter_id(self, message_id: str, **where: Any) -> int:
        clauses = "".join(f" AND {k} = :{k}" for k in where)
        rows = self.query(
            f"SELECT id FROM dead_letters WHERE message_id = :m{clauses} ORDER BY id",  # noqa: S608
            m=message_id,
            **where,
        )
        assert len(rows) == 1, rows
        return int(rows[0][0])

    # -- the CLIs ------------------------------------------------------------------------------

    def cli(self, *args: str, retry: bool = False, env: dict[str, str] | None = None) -> Result:
        get_settings.cache_clear()
        try:
            return CliRunner().invoke(
                retry_app if retry else dlq_app, list(args), env={**self.env, **(env or {})}
            )
        finally:
            get_settings.cache_clear()

    def cli_json(self, *args: str, retry: bool = False) -> Any:
        result = self.cli(*args, "--json", retry=retry)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()


@contextlib.contextmanager
def dlq_stack(
    tmp_path: Path, *, tiers: tuple[int, ...] = (300, 600), **topology: Any
) -> Iterator[DlqStack]:
    """Everything the dead-letter tools need, isolated; removed afterwards."""
    config = TopologyConfig(retry_tiers_s=tiers, **topology)
    with scratch_vhost("dlq", config) as vhost, migrated_schema(pool_size=6) as (engine, schema):
        url = amqp_url(vhost)
        keys = KeyRegistry(ProducerKey.generate(p, t) for p, t in PRODUCER_TYPES.items())
        keys.add(ProducerKey.generate("archive", ["*"]))
        keys_file = tmp_path / "keys.json"
        keys.save(keys_file)
        env = {
            "FLEET_AMQP_URL": url,
            "FLEET_DATABASE_URL": DATABASE_URL,
            "FLEET_DB_SCHEMA": schema,
            "FLEET_KEYS_FILE": str(keys_file),
            "FLEET_RETRY_TIERS_S": json.dumps(list(tiers)),
            "FLEET_PUBLISH_TIMEOUT_S": "10",
        }
        stack = DlqStack(url, vhost, engine, schema, keys, keys_file, env, tiers)
        try:
            yield stack
        finally:
            stack.close()


def new_id() -> str:
    return str(uuid.uuid4())
