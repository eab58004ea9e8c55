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


@dataclass
class LocalFleet:
    """Children of one local fleet; ``env`` holds its ``FLEET_*`` settings."""

    env: dict[str, str]
    log_dir: Path
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[object] = field(default_factory=list)

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        merged = {**os.environ, **self.env, **(extra or {})}
        merged.setdefault("PYTHONUNBUFFERED", "1")
        return merged

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
        extra: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        args = ["worker", "--processes", str(processes), "--threads", str(threads)]
        for queue in queues or []:
            args += ["--queue", queue]
        args.append("--suspect-lane" if suspect_lane else "--no-suspect-lane")
        args.append("--outbox-relay" if outbox_relay else "--no-outbox-relay")
        return self.spawn(name, args, extra)

    @staticmethod
    def signal(child: subprocess.Popen[bytes], signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    def stop(self, child: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
        """SIGTERM to the group, wait, then SIGKILL; the exit code."""
        self.signal(child, signal.SIGTERM)
        try:
            return child.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(child, signal.SIGKILL)
            return child.wait(10)

    def stop_all(self, timeout_s: float = 60.0) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                self.stop(child, timeout_s)
        for log in self._logs:
            with contextlib.suppress(Exception):
                log.close()  # type: ignore[attr-defined]
        self.children.clear()
        self._logs.clear()
