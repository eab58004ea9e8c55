"""Sentry: one event per dead letter — the final failures — and nothing else (DESIGN §8).

Why not sentry-sdk's Dramatiq integration: it attaches every message's arguments to its events
(our argument is the ``Delivery``, envelope and headers) and reports every failed attempt, while
a retried message is not a failure anyone should be paged for. Instead the ``dead`` outcome
event (``workers.events``), emitted once the dead letter is confirmed by the broker, becomes one
Sentry event tagged with the message id, type, queue, reason and error class, grouped by
(queue, type, reason).

What is sent and what is scrubbed: ``sentry_sdk.init`` runs only when ``FLEET_SENTRY_DSN`` is set,
with no default or auto-enabled integrations (no logging, excepthook, SQL or HTTP breadcrumbs),
no PII (``send_default_pii`` unset: deprecated in sentry-sdk 2.75, unset is off), no local
variables, no source context, no breadcrumbs. ``scrub_event`` (``before_send``)
drops every event not tagged as a final failure — whoever captured it — and strips requests,
``extra``, user, breadcrumbs, custom contexts and frame variables from the rest.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, cast

import dramatiq
import sentry_sdk
from sentry_sdk.transport import Transport
from sentry_sdk.types import Event, Hint

log = logging.getLogger(__name__)

FINAL_FAILURE_TAG = "fleet.final_failure"
MAX_TAG_CHARS = 200
KEPT_CONTEXTS = frozenset({"os", "runtime", "trace"})
DROPPED_KEYS = ("request", "extra", "user", "breadcrumbs", "modules")

_initialised_pid: int | None = None
_lock = threading.Lock()


def init_sentry(
    dsn: str | None,
    *,
    environment: str | None = None,
    release: str | None = None,
    transport: Transport | None = None,
) -> bool:
    """Initialise Sentry for this process, once; a no-op without a DSN. True when active."""
    global _initialised_pid
    if not dsn:
        return False
    with _lock:
        if _initialised_pid == os.getpid():
            return True
        sentry_sdk.init(
            dsn=dsn,
            transport=transport,
            environment=environment,
            release=release,
            default_integrations=False,
            auto_enabling_integrations=False,
            integrations=[],
            # send_default_pii stays unset: sentry-sdk 2.75 deprecates it, and unset means no
            # PII (its default event scrubber stays on, too).
            include_local_variables=False,
            include_source_context=False,
            attach_stacktrace=False,
            max_breadcrumbs=0,
            auto_session_tracking=False,
            send_client_reports=False,
            before_send=scrub_event,
            before_send_transaction=lambda _event, _hint: None,
        )
        _initialised_pid = os.getpid()
        return True


def scrub_event(event: Event, _hint: Hint) -> Event | None:
    """``before_send``: only final failures pass, stripped of anything that may hold payload."""
    raw = cast(dict[str, Any], event)
    tags = raw.get("tags") or {}
    if not isinstance(tags, dict) or tags.get(FINAL_FAILURE_TAG) != "true":
        return None
    for key in DROPPED_KEYS:
        raw.pop(key, None)
    contexts = raw.get("contexts")
    if isinstance(contexts, dict):
        raw["contexts"] = {k: v for k, v in contexts.items() if k in KEPT_CONTEXTS}
    for container in ("exception", "threads"):
        for value in (raw.get(container) or {}).get("values") or []:
            for frame in (value.get("stacktrace") or {}).get("frames") or []:
                frame.pop("vars", None)
    return event


def report_dead_letter(event: dict[str, Any]) -> None:
    """One Sentry event for a ``dead`` outcome event; other kinds are ignored."""
    if event.get("event") != "dead":
        return
    queue, message_type, reason = event.get("queue"), event.get("type"), event.get("reason")
    tags = {
        FINAL_FAILURE_TAG: "true",
        "message_id": event.get("message_id"),
        "message_type": message_type,
        "queue": queue,
        "reason": reason,
        "error_class": event.get("error_class"),
        "producer": event.get("producer"),
        "attempt": event.get("attempt"),
    }
    sentry_sdk.capture_event(
        {
            "message": f"dead-lettered {message_type} from {queue}: {reason}",
            "level": "error",
            "logger": "fleet.dead",
            "fingerprint": ["fleet.dead", str(queue), str(message_type), str(reason)],
            "tags": {k: str(v)[:MAX_TAG_CHARS] for k, v in tags.items() if v is not None},
        }
    )


class SentryMiddleware(dramatiq.Middleware):
    """Initialises Sentry after fork and reports the process's dead letters to it."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        from workers.runtime import current_runtime

        runtime = current_runtime()
        settings = runtime.settings
        dsn = settings.sentry_dsn.get_secret_value() if settings.sentry_dsn else None
        if init_sentry(dsn, environment=settings.sentry_environment):
            runtime.events.subscribe(report_dead_letter)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if _initialised_pid == os.getpid():
            sentry_sdk.flush(timeout=2.0)
