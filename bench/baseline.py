"""The two baselines the fleet is measured against, as Dramatiq apps for Dramatiq's own CLI.

    python -m dramatiq bench.baseline:noop --processes 2 --threads 8 --queues billing
    python -m dramatiq bench.baseline:straightforward --processes 2 --threads 8 --queues billing

Both run on ``workers.broker.FleetBroker`` — the fleet's own consumer code — with **no
middleware** and one actor, because Dramatiq's RabbitMQ broker declares classic queues and
cannot consume the fleet's pre-declared quorum queues (406). So the queue, the consumer, the
prefetch (= threads) and the ack path are the fleet's; only what the actor does differs.

- ``noop``: acks. What Dramatiq and the consumer cost by themselves.
- ``straightforward``: what a first version of the pipeline would do, written plainly and left
  alone while the fleet gets faster: AES-GCM decrypt of the JWE compact body with
  ``cryptography`` (the key looked up by the header's kid), pydantic ``model_validate_json`` of
  the payload, then one SQLAlchemy ORM ``Session`` per message that adds an idempotency row and
  a ledger row and commits (a duplicate message id rolls back and is acked). The engine is the
  default one (no pre-ping), its pool as large as the threads. It does not call
  ``queues.envelope.open_envelope`` on purpose: the fleet's envelope code is what is being made
  faster, and a baseline that moved with it would hide the gain.

Each worker process counts its completions (count, first and last time) and a background
thread writes them to ``$BENCH_COMPLETIONS_DIR/<pid>.json`` at most four times a second, for the
harness (bench/ratios.py) to read without asking the broker or the database.

Settings come from the environment: ``BENCH_AMQP_URL``, ``BENCH_THREADS``,
``BENCH_COMPLETIONS_DIR`` and, for ``straightforward``, ``BENCH_DATABASE_URL``,
``BENCH_DB_SCHEMA``, ``BENCH_KEYS_FILE``.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import dramatiq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import BigInteger, DateTime, Engine, String, create_engine, func
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from queues.contracts import model_for
from queues.keys import KeyRegistry
from workers.broker import Delivery, FleetBroker, Settlement

ACTOR = "baseline"
FLUSH_EVERY_S = 0.25


# -- the straightforward pipeline's tables --------------------------------------------------------


class Base(DeclarativeBase):
    pass


class ProcessedMessage(Base):
    """The idempotency row: one per message id."""

    __tablename__ = "processed_messages"

    message_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class LedgerEntry(Base):
    """The effect: one ledger row per charge."""

    __tablename__ = "ledger_entries"

    entry_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    message_id: Mapped[uuid.UUID]
    account_id: Mapped[uuid.UUID]
    source_reference: Mapped[str] = mapped_column(String(128))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    charged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# -- completions, counted per process -------------------------------------------------------------


class Completions:
    """This process's finished messages: count, first and last time, flushed to a small file."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"{os.getpid()}.json"
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None

    def add(self) -> None:
        now = time.time()
        with self._lock:
            self.count += 1
            self.first = self.first or now
            self.last = now
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_forever, daemon=True)
                self._flusher.start()

    def _flush_forever(self) -> None:
        written = -1
        while True:
            with self._lock:
                state = {"count": self.count, "first": self.first, "last": self.last}
            if state["count"] != written:
                partial = self.path.with_suffix(".tmp")
                partial.write_text(json.dumps(state))
                partial.replace(self.path)
                written = int(state["count"])
            time.sleep(FLUSH_EVERY_S)


_completions: Completions | None = None
_state_lock = threading.Lock()


def completions() -> Completions:
    global _completions
    with _state_lock:
        if _completions is None or not _completions.path.name.startswith(f"{os.getpid()}."):
            _completions = Completions(Path(os.environ["BENCH_COMPLETIONS_DIR"]))
        return _completions


# -- the straightforward pipeline -----------------------------------------------------------------


class Pipeline:
    """One per worker process (made on its first message, after the fork)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        threads = int(os.environ["BENCH_THREADS"])
        self.engine: Engine = create_engine(
            os.environ["BENCH_DATABASE_URL"],
            pool_size=threads,
            max_overflow=0,
            hide_parameters=True,
            connect_args={"options": f"-csearch_path={os.environ['BENCH_DB_SCHEMA']}"},
        )
        registry = KeyRegistry.load(Path(os.environ["BENCH_KEYS_FILE"]))
        self.ciphers = {key.kid: AESGCM(key.secret) for key in registry}

    def decrypt(self, body: bytes) -> tuple[dict[str, Any], bytes]:
        protected, _key, iv, ciphertext, tag = body.split(b".")
        header = json.loads(_b64(protected))
        plaintext = self.ciphers[header["kid"]].decrypt(
            _b64(iv), _b64(ciphertext) + _b64(tag), protected
        )
        return header, plaintext

    def handle(self, delivery: Delivery) -> None:
        header, plaintext = self.decrypt(delivery.body)
        charge = model_for(header["message_type"], header["schema_version"]).model_validate_json(
            plaintext
        )
        message_id = uuid.UUID(header["message_id"])
        with Session(self.engine) as session:
            session.add(ProcessedMessage(message_id=message_id))
            session.add(
                LedgerEntry(
                    message_id=message_id,
                    account_id=charge.account_id,  # type: ignore[attr-defined]
                    source_reference=charge.source_reference,  # type: ignore[attr-defined]
                    amount_minor=charge.amount.amount_minor,  # type: ignore[attr-defined]
                    currency=charge.amount.currency,  # type: ignore[attr-defined]
                    charged_at=charge.charged_at,  # type: ignore[attr-defined]
                )
            )
            try:
                session.commit()
            except IntegrityError:
                session.rollback()  # processed before: acknowledge it again, change nothing


def _b64(segment: bytes) -> bytes:
    return base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))


_pipeline: Pipeline | None = None


def pipeline() -> Pipeline:
    global _pipeline
    with _state_lock:
        if _pipeline is None or _pipeline.pid != os.getpid():
            _pipeline = Pipeline()
        return _pipeline


# -- the two apps ---------------------------------------------------------------------------------


def do_nothing(delivery: Delivery) -> None:
    delivery.settle(Settlement.ACK)
    completions().add()


def straightforward_pipeline(delivery: Delivery) -> None:
    pipeline().handle(delivery)
    delivery.settle(Settlement.ACK)
    completions().add()


def _app(function: Any) -> FleetBroker:
    broker = FleetBroker(
        os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
        choose_actor=lambda _delivery: ACTOR,
        prefetch=int(os.environ.get("BENCH_THREADS", "8")),
        middleware=[],
    )
    dramatiq.actor(actor_name=ACTOR, queue_name="billing", broker=broker)(function)
    return broker


noop = _app(do_nothing)
straightforward = _app(straightforward_pipeline)
