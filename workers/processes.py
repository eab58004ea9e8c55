"""Process mains that run beside the workers: each reads the settings, builds what its library
needs and runs until SIGTERM / SIGINT. Each is a supervised child of ``fleet worker``
(``workers.supervisor``) and a ``fleet`` command of its own.

    run_archiver   dead letters ▶ the archive (``dlq.archiver``): ``fleet dlq archive``

The suspect lane (``workers.app:run_suspect_lane``) and the outbox relay
(``workers.relay:run_outbox_relay``) still live next to their loops.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from dlq.archiver import FAULT_AFTER_COMMIT, Archiver, FaultHook
from handlers.store.db import make_engine
from workers.settings import Settings, get_settings

KILLED_EXIT_CODE = 137


def run_archiver() -> int:
    """The dead-letter archiver as a process of its own (``fleet dlq archive``, or a child of
    ``fleet worker --archiver``): settings from the environment."""
    settings = get_settings()
    stopping = _stop_on_signals()
    engine = make_engine(
        settings.database_url.get_secret_value(),
        settings.db_schema,
        pool_size=1,
        max_overflow=1,
        application_name="fleet-archiver",
    )
    archiver = Archiver(
        settings.amqp_url.get_secret_value(),
        engine,
        batch_size=settings.archiver_batch_size,
        fault_hook=_archiver_fault_hook(settings),
        heartbeat_s=settings.amqp_heartbeat_s,
    )
    try:
        archiver.run(stopping)
    finally:
        engine.dispose()
    return 0


def _stop_on_signals() -> threading.Event:
    stopping = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return stopping


def _archiver_fault_hook(settings: Settings) -> FaultHook | None:
    """Tests only (``FLEET_FAULT_AT=archive_after_commit_before_ack``): die there, once per
    ``FLEET_FAULT_MARKER`` file when one is set."""
    if settings.fault_at != FAULT_AFTER_COMMIT:
        return None
    marker = settings.fault_marker

    def crash(point: str) -> None:
        if point != FAULT_AFTER_COMMIT:
            return
        if marker is not None:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                return  # crashed here once already
        os._exit(KILLED_EXIT_CODE)

    return crash
