"""A fleet on this machine: the simulator and worker processes as child processes.

Used by the demo and by the end-to-end tests: each instance gets its own environment (vhost,
schema, key file, events file), starts real ``fleet`` processes, and stops everything it
started. Every child runs in its own session so that a signal reaches its whole process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

FLEET = [sys.executable, "-m", "workers"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs; zombies nobody reaps do not count."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            line = stat.read_text()
        except OSError:
            continue
        state, _ppid, group = line[line.rindex(")") + 2 :].split()[:3]
        if int(group) == pgid and state != "Z":
            return True
    return False


@dataclass
class LocalFleet:
    """Children of one local fleet; ``env`` holds its ``FLEET_*`` settings."""

    env: dict[str, str]
    log_dir: Path
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[object] = field(default_factory=list)

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """This fleet's ``FLEET_*`` settings and none inherited from the caller's shell."""
        own = {**self.env, **(extra or {})}
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        return {**inherited, "PYTHONUNBUFFERED": "1", **own}

    def spawn(
        self, name: str, args: list[str], extra: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        child = subprocess.Popen(
            [*FLEET, *args],
            env=self.environment(extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.children.append(child)
        return child

    def start_simulator(
        self, *, failure_rate: float = 0.0, latency_ms: float = 0.0, seed: int | None = None
    ) -> str:
        """Start ``fleet simulate network`` on a free port; sets ``FLEET_NETWORK_URL``."""
        port = free_port()
        args = ["simulate", "network", "--port", str(port), "--failure-rate", str(failure_rate)]
        args += ["--latency-ms", str(latency_ms)]
        if seed is not None:
            args += ["--seed", str(seed)]
        self.spawn("simulator", args)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{url}/stats", timeout=1).raise_for_status()
                self.env["FLEET_NETWORK_URL"] = url
                return url
            time.sleep(0.1)
        raise RuntimeError(f"the network simulator did not start; see {self.log_dir}/simulator.log")

    def start_workers(
        self,
        name: str = "worker",
        *,
        processes: int = 2,
        threads: int = 4,
        queues: list[str] | None = None,
        suspect_lane: bool = True,
        outbox_relay: bool = True,
        archiver: bool = False,
        metrics_port: int = 0,
        log_format: str = "text",
        extra: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """``fleet worker``; its log (text by default: people read it) goes to ``<name>.log``."""
        args = ["worker", "--processes", str(processes), "--threads", str(threads)]
        for queue in queues or []:
            args += ["--queue", queue]
        args.append("--suspect-lane" if suspect_lane else "--no-suspect-lane")
        args.append("--outbox-relay" if outbox_relay else "--no-outbox-relay")
        args.append("--archiver" if archiver else "--no-archiver")
        args += ["--metrics-port", str(metrics_port), "--log-format", log_format]
        return self.spawn(name, args, extra)

    @staticmethod
    def signal(child: subprocess.Popen[bytes], signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    def stop(self, child: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
        """SIGTERM to the child alone, wait; then SIGKILL whatever is left of its group.

        Not to the whole group: Dramatiq's main process forwards SIGTERM to its worker
        processes, and a worker process that gets a second one exits at once ("Killing worker
        process…", exit 1) instead of finishing its in-flight messages.
        """
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        try:
            code = child.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(child, signal.SIGKILL)
            return child.wait(10)
        deadline = time.monotonic() + timeout_s
        while group_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.1)  # side processes (relay, suspect lane) may outlive the supervisor
        self.signal(child, signal.SIGKILL)
        return code

    def stop_all(self, timeout_s: float = 60.0) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                self.stop(child, timeout_s)
        self._forget()

    def kill_all(self) -> None:
        """SIGKILL every child's whole process group at once (nothing graceful: for tests whose
        checks are done, where a graceful stop would only cost time)."""
        for child in self.children:
            self.signal(child, signal.SIGKILL)
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(10)
        self._forget()

    def _forget(self) -> None:
        for log in self._logs:
            with contextlib.suppress(Exception):
                log.close()  # type: ignore[attr-defined]
        self.children.clear()
        self._logs.clear()
