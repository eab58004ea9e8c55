"""Health: every worker process writes its own state; ``fleet health`` reads it (DESIGN §8).

A worker process keeps its state in memory — consumers connected, the last database round
trip, per worker thread the message in hand and since when — and a small writer thread puts it
in ``<FLEET_HEALTH_DIR>/worker-<pid>.json`` every ``health_interval_s`` (write + rename, so a
reader never sees half a file). A second small thread does the database round trip
(``SELECT 1``), so a hanging database shows as a stale round trip, not as a stale file.

``check_health`` reads the files — no broker or database call, cheap enough for a Kubernetes
exec probe — and says, in one line, why a pod is unhealthy:

- no state file of a live process (the worker is not running, or has stopped);
- a file not rewritten within ``max_stale_s`` (the process hangs);
- a thread busy on one message for longer than ``max_busy_s`` (stuck);
- readiness only: a consumer not connected, no successful database round trip within
  ``max_stale_s``, or the process shutting down.

Files of processes that are gone (killed, or a restarted suspect lane) are ignored: a probe runs
in the pod's PID namespace and sees which pids are alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq

STATE_VERSION = 1
STATE_GLOB = "worker-*.json"
EXPECTATION_GLOB = "fleet-*.json"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (in this PID namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def state_path(directory: Path, pid: int) -> Path:
    return directory / f"worker-{pid}.json"


def expectation_path(directory: Path, pid: int) -> Path:
    return directory / f"fleet-{pid}.json"


def forget_stopped_processes(directory: Path) -> None:
    """Remove state files of processes that are gone (``fleet worker`` starts with this)."""
    for pattern in (STATE_GLOB, EXPECTATION_GLOB):
        for state in read_states(directory, pattern) if directory.is_dir() else []:
            pid = state.get("pid")
            if isinstance(pid, int) and not pid_alive(pid):
                (directory / state["file"]).unlink(missing_ok=True)


def expect_worker_processes(directory: Path, count: int) -> Path:
    """Written by ``fleet worker``'s master: how many worker processes should report."""
    directory.mkdir(parents=True, exist_ok=True)
    target = expectation_path(directory, os.getpid())
    target.write_text(json.dumps({"pid": os.getpid(), "worker_processes": count}))
    return target


class ProcessHealth:
    """The health state of one worker process; thread-safe, cheap to update per message."""

    def __init__(self, queues: list[str], now: float | None = None) -> None:
        self.pid = os.getpid()
        self.queues = sorted(queues)
        suspect = bool(queues) and all(q.endswith(".suspect") for q in queues)
        self.role = "suspect" if suspect else "worker"
        self.started_at = time.time() if now is None else now
        self.stopping = False
        self.consumers: dict[str, bool] = {}
        self.database: dict[str, Any] = {"ok": None, "checked_at": None, "round_trip_s": None}
        self.threads: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def message_started(
        self, thread: str, message_id: str | None, now: float | None = None
    ) -> None:
        moment = time.time() if now is None else now
        with self._lock:
            state = self.threads.setdefault(thread, {"processed": 0, "last_finished_at": None})
            state.update(busy_since=moment, message_id=message_id, last_started_at=moment)

    def message_finished(self, thread: str, now: float | None = None) -> None:
        moment = time.time() if now is None else now
        with self._lock:
            state = self.threads.setdefault(thread, {"processed": 0})
            state.update(busy_since=None, message_id=None, last_finished_at=moment)
            state["processed"] = int(state.get("processed") or 0) + 1

    def database_checked(self, round_trip_s: float | None, error: str | None = None) -> None:
        with self._lock:
            self.database = {
                "ok": error is None,
                "checked_at": time.time(),
                "round_trip_s": round_trip_s,
                "error": error,
                "last_ok_at": time.time() if error is None else self.database.get("last_ok_at"),
            }

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        with self._lock:
            return {
                "version": STATE_VERSION,
                "pid": self.pid,
                "role": self.role,
                "queues": self.queues,
                "started_at": self.started_at,
                "written_at": time.time() if now is None else now,
                "stopping": self.stopping,
                "consumers": dict(self.consumers),
                "database": dict(self.database),
                "threads": {name: dict(state) for name, state in self.threads.items()},
            }

    def write(self, directory: Path, now: float | None = None) -> Path:
        """Write the state file atomically; returns its path."""
        directory.mkdir(parents=True, exist_ok=True)
        target = state_path(directory, self.pid)
        scratch = target.with_suffix(".tmp")
        scratch.write_text(json.dumps(self.snapshot(now), separators=(",", ":")))
        os.replace(scratch, target)
        return target


class HealthMiddleware(dramatiq.Middleware):
    """Keeps a worker process's health state and writes it to the health directory."""

    def __init__(self) -> None:
        self.state: ProcessHealth | None = None
        self._worker: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        from workers.runtime import current_runtime

        settings = current_runtime().settings
        self._worker = worker
        self.state = ProcessHealth(sorted(getattr(worker, "consumers", {}) or []))
        for thread in getattr(worker, "workers", []):
            self.state.threads[thread.name] = {"busy_since": None, "processed": 0}
        self._stop.clear()
        self._threads = [
            threading.Thread(
                target=self._write_loop,
                args=(settings.health_dir, settings.health_interval_s),
                name="fleet-health-writer",
                daemon=True,
            ),
            threading.Thread(
                target=self._database_loop,
                args=(settings.health_interval_s,),
                name="fleet-health-database",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if self.state is not None:
            self.state.message_started(threading.current_thread().name, message.message_id)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        if self.state is not None:
            self.state.message_finished(threading.current_thread().name)

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if self.state is not None:
            self.state.message_finished(threading.current_thread().name)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self.state is not None:
            self.state.stopping = True

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        from workers.runtime import current_runtime

        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        if self.state is not None:
            with contextlib.suppress(FileNotFoundError):
                state_path(current_runtime().settings.health_dir, self.state.pid).unlink()

    # -- the two small threads -----------------------------------------------------------------

    def _write_loop(self, directory: Path, interval_s: float) -> None:
        while True:
            state = self.state
            if state is not None:
                state.consumers = _consumers_connected(self._worker)
                try:
                    state.write(directory)
                except OSError as exc:
                    dramatiq.get_logger(__name__).warning(
                        "cannot write the health state to %s: %s", directory, exc
                    )
            if self._stop.wait(interval_s):
                return

    def _database_loop(self, interval_s: float) -> None:
        from sqlalchemy import text

        from workers.runtime import current_runtime

        engine = current_runtime().engine
        while True:
            started = time.monotonic()
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
            except Exception as exc:
                if self.state is not None:
                    self.state.database_checked(None, type(exc).__name__)
            else:
                if self.state is not None:
                    self.state.database_checked(round(time.monotonic() - started, 6))
            if self._stop.wait(interval_s):
                return


def _consumers_connected(worker: Any) -> dict[str, bool]:
    """Per consumed queue: does its consumer hold an open connection?"""
    connected = {}
    for queue, thread in list((getattr(worker, "consumers", None) or {}).items()):
        consumer = getattr(thread, "consumer", None)
        connected[queue] = consumer is not None and bool(getattr(consumer, "is_open", True))
    return connected


# -- the probe --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


def read_states(directory: Path, pattern: str = STATE_GLOB) -> list[dict[str, Any]]:
    """Every state file in the directory (unreadable ones as ``{"unreadable": path}``)."""
    states = []
    for path in sorted(directory.glob(pattern)):
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            continue  # its process stopped while we looked
        except (OSError, ValueError):
            state = {"unreadable": str(path)}
        if not isinstance(state, dict):
            state = {"unreadable": str(path)}
        state["file"] = path.name
        states.append(state)
    return states


def check_health(
    directory: Path,
    *,
    max_stale_s: float,
    max_busy_s: float,
    liveness: bool = False,
    now: float | None = None,
    alive: Any = pid_alive,
) -> Verdict:
    """Judge the worker processes of this pod from their state files alone."""
    moment = time.time() if now is None else now
    if not directory.is_dir():
        return Verdict(False, f"no health directory {directory}: is the worker running?")
    states = read_states(directory)
    live = [s for s in states if "unreadable" in s or alive(int(s.get("pid") or 0))]
    if not live:
        gone = f" ({len(states)} files of stopped processes)" if states else ""
        return Verdict(False, f"no live worker process wrote state in {directory}{gone}")
    if not liveness:
        expected = sum(
            int(e.get("worker_processes") or 0)
            for e in read_states(directory, EXPECTATION_GLOB)
            if alive(int(e.get("pid") or 0))
        )
        if len(live) < expected:
            return Verdict(False, f"only {len(live)} of {expected} worker processes report")
    threads = 0
    round_trips = []
    for state in live:
        if "unreadable" in state:
            return Verdict(False, f"unreadable state file {state['unreadable']}")
        problem = _problem(state, moment, max_stale_s, max_busy_s, liveness)
        if problem:
            return Verdict(False, f"pid {state.get('pid')} ({state.get('role')}): {problem}")
        threads += len(state.get("threads") or {})
        round_trip = (state.get("database") or {}).get("round_trip_s")
        if round_trip is not None:
            round_trips.append(float(round_trip))
    summary = f"ok: {len(live)} worker processes, {threads} threads, none stuck"
    if not liveness:
        summary += ", consumers connected"
        if round_trips:
            summary += f", database round trip {max(round_trips) * 1000:.1f} ms"
    return Verdict(True, summary)


def _problem(
    state: dict[str, Any], now: float, max_stale_s: float, max_busy_s: float, liveness: bool
) -> str | None:
    written = float(state.get("written_at") or 0)
    if now - written > max_stale_s:
        return f"state not written for {now - written:.0f} s (> {max_stale_s:g} s): hanging?"
    for name, thread in sorted((state.get("threads") or {}).items()):
        busy_since = thread.get("busy_since")
        if busy_since is not None and now - float(busy_since) > max_busy_s:
            return (
                f"thread {name} stuck: busy {now - float(busy_since):.0f} s "
                f"(> {max_busy_s:g} s) on message {thread.get('message_id')}"
            )
    if liveness:
        return None
    if state.get("stopping"):
        return "shutting down"
    disconnected = sorted(q for q, ok in (state.get("consumers") or {}).items() if not ok)
    if disconnected:
        return f"consumer not connected: {', '.join(disconnected)}"
    database = state.get("database") or {}
    last_ok = database.get("last_ok_at")
    started = float(state.get("started_at") or now)
    if last_ok is None and now - started > max_stale_s:
        return f"no successful database round trip since start ({database.get('error')})"
    if last_ok is not None and now - float(last_ok) > max_stale_s:
        return (
            f"no successful database round trip for {now - float(last_ok):.0f} s "
            f"({database.get('error')})"
        )
    return None
