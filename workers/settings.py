"""Settings, in one place: environment variables with the ``FLEET_`` prefix (pydantic-settings).

Every setting carries its unit in its name and a one-line description; README lists them.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from queues.keys import KeyRegistry, KeyRegistryError
from queues.wire import DEFAULT_MAX_BODY_BYTES


class Settings(BaseSettings):
    """The fleet's settings; each field is ``FLEET_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="ignore")

    amqp_url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/%2F"),
        description="RabbitMQ URL (user, password, host, port, vhost)",
    )
    database_url: SecretStr = Field(
        default=SecretStr("postgresql+psycopg://postgres@127.0.0.1:5432/test"),
        description="PostgreSQL URL (SQLAlchemy form, psycopg 3 driver)",
    )
    keys_file: Path | None = Field(
        default=None, description="Key registry file (mode 0600); see docs/wire-format.md"
    )
    keys_json: SecretStr | None = Field(
        default=None, description="Key registry as JSON text, instead of keys_file (k8s secret)"
    )
    producer: str = Field(
        default="fleet", description="Producer name this process seals as (outbox, fleet publish)"
    )
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES, ge=1024, description="Largest envelope accepted, bytes"
    )
    retry_tiers_s: list[int] = Field(
        default=[5, 30, 120, 600, 3600],
        description="Retry tier delays in seconds, shortest first (one parking queue each)",
    )
    delivery_limit: int = Field(
        default=20, ge=2, description="Quorum delivery limit: the backstop for poison messages"
    )
    suspect_delivery_limit: int = Field(
        default=3, ge=1, description="Quorum delivery limit of the suspect lanes"
    )
    queue_max_length: int = Field(
        default=1_000_000, ge=1, description="Max messages per work queue; publishes beyond refused"
    )
    publish_window: int = Field(
        default=1000, ge=1, description="Unconfirmed messages a publisher keeps in flight"
    )
    publish_timeout_s: float = Field(
        default=30.0, gt=0, description="How long a publisher waits for confirms or while blocked"
    )
    amqp_heartbeat_s: int = Field(
        default=30,
        ge=1,
        le=600,
        description="AMQP heartbeat timeout, seconds: a silent broker link is dropped and "
        "reconnected after about this long",
    )
    db_schema: str | None = Field(
        default=None, description="PostgreSQL schema (search_path) of the fleet's tables"
    )
    network_url: str = Field(
        default="http://127.0.0.1:8089", description="Base URL of the network element (HTTP)"
    )
    network_timeout_s: float = Field(
        default=2.0, gt=0, description="Timeout of one network element call, seconds"
    )
    network_attempts: int = Field(
        default=4, ge=1, le=10, description="Tries per network element call (tenacity), in-process"
    )
    breaker_failure_threshold: int = Field(
        default=5, ge=1, description="Consecutive outage failures that open a circuit breaker"
    )
    breaker_open_s: float = Field(
        default=5.0, gt=0, description="Seconds a breaker stays open before it tries again"
    )
    worker_domains: list[str] = Field(
        default=[], description="Domains this worker serves (set by `fleet worker`; [] = all)"
    )
    worker_threads: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Worker threads per process (= prefetch of queues without batched types)",
    )
    batch_max_messages: int = Field(
        default=64,
        ge=1,
        le=1000,
        description="Most messages one transaction commits together (1 = no batching)",
    )
    batch_prefetch: int = Field(
        default=64,
        ge=1,
        le=1000,
        description="Deliveries a process holds per queue with batched types (billing, crm); "
        "other queues hold FLEET_WORKER_THREADS",
    )
    batch_wait_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="How long a batch waits for more messages after its first, milliseconds",
    )
    shutdown_timeout_s: float = Field(
        default=20.0, gt=0, description="How long a stopping worker finishes in-flight messages"
    )
    worker_restart_limit: int = Field(
        default=5,
        ge=0,
        description="Restarts of one `fleet worker` child within FLEET_WORKER_RESTART_WINDOW_S "
        "before it gives up on a crash loop (exit 1); 0 = never restart",
    )
    worker_restart_window_s: float = Field(
        default=300.0, gt=0, description="The window FLEET_WORKER_RESTART_LIMIT counts in, seconds"
    )
    max_attempts: int = Field(
        default=8, ge=1, description="Attempts of a transiently failing message before it dies"
    )
    skew_max_attempts: int = Field(
        default=5, ge=1, description="Attempts for unknown kid / schema version (deploy skew)"
    )
    not_yet_horizon_s: float = Field(
        default=6 * 3600, gt=0, description="How long a NotYet message may wait for its cause"
    )
    events_file: Path | None = Field(
        default=None, description="Append outcome events (JSON lines) here; the demo reads them"
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="Log lines: json (one object per line) or text"
    )
    log_level: str = Field(default="INFO", description="Root log level (DEBUG shows successes)")
    log_success_sample_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of successful outcomes logged at INFO, 0..1"
    )
    metrics_port: int = Field(
        default=9191, ge=0, le=65535, description="Port of `fleet worker`'s /metrics (0 = none)"
    )
    metrics_bind: str = Field(
        default="0.0.0.0",  # noqa: S104 — Prometheus scrapes the pod's address
        description="Address the metrics server binds",
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="Prometheus multiprocess directory, emptied at start (default: a fresh "
        "temporary directory per `fleet worker`)",
    )
    outbox_lag_interval_s: float = Field(
        default=5.0, gt=0, description="How often the relay measures the outbox lag, seconds"
    )
    sentry_dsn: SecretStr | None = Field(
        default=None, description="Sentry DSN; unset = no Sentry. Only dead letters are sent"
    )
    sentry_environment: str | None = Field(
        default=None, description="Sentry environment name (e.g. production, staging)"
    )
    health_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / f"fleet-health-{os.getuid()}",
        description="Directory of the worker processes' health state files (`fleet health`)",
    )
    health_interval_s: float = Field(
        default=5.0, gt=0, description="How often a worker writes its health state and pings the DB"
    )
    health_max_stale_s: float = Field(
        default=30.0, gt=0, description="`fleet health`: oldest acceptable state / DB round trip"
    )
    health_max_busy_s: float = Field(
        default=300.0, gt=0, description="`fleet health`: longer busy on one message = stuck"
    )
    dedup_horizon_days: float = Field(
        default=30, gt=0, description="Dedup window (inbox retention), days; replay refuses older"
    )
    archiver_batch_size: int = Field(
        default=100, ge=1, le=10_000, description="Dead letters the archiver commits per batch"
    )
    canary_wait_s: float = Field(
        default=60.0, gt=0, description="How long `fleet dlq replay --canary` waits per outcome"
    )
    fault_at: str | None = Field(
        default=None,
        description="TESTS ONLY: crash point before_commit | mid_batch (before a batch of 2 "
        "or more commits) | after_commit_before_ack | "
        "after_retry_publish_before_ack | after_suspect_publish_before_ack | "
        "after_dead_publish_before_ack | relay_after_claim_before_publish | "
        "relay_after_publish_before_commit (the outbox relay) | "
        "archive_after_commit_before_ack (the archiver)",
    )
    fault_marker: Path | None = Field(
        default=None, description="TESTS ONLY: crash once, when this file can be created"
    )
    fault_crash_message_ids: list[str] = Field(
        default=[], description="TESTS ONLY: message ids whose processing kills the process"
    )

    def key_registry(self) -> KeyRegistry:
        """The key registry from ``keys_json`` or ``keys_file``.

        Raises:
            KeyRegistryError: neither is set, or the registry is unreadable.
        """
        if self.keys_json is not None:
            return KeyRegistry.from_json(self.keys_json.get_secret_value())
        if self.keys_file is not None:
            return KeyRegistry.load(self.keys_file)
        raise KeyRegistryError("no key registry: set FLEET_KEYS_FILE or FLEET_KEYS_JSON")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
