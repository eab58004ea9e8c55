"""``fleet worker``'s supervisor: restarts with backoff, the crash-loop bound, the stop — on fake
children and a fake clock; then once with real forked processes and real signals."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from workers.supervisor import (
    ChildSpec,
    RestartPolicy,
    StopRequest,
    Supervisor,
    describe_exit,
)

SIGTERM = StopRequest(signal.SIGTERM)
CTRL_C = StopRequest(signal.SIGINT, from_terminal=True)


@dataclass
class FakeChild:
    name: str
    pid: int
    started_at: float
    stops_on_sigterm: bool = True
    exitcode: int | None = None
    signals: list[int] = field(default_factory=list)

    def send(self, signum: int) -> None:
        self.signals.append(signum)
        if self.exitcode is None and signum == signal.SIGKILL:
            self.exitcode = -signal.SIGKILL
        elif self.exitcode is None and signum == signal.SIGTERM and self.stops_on_sigterm:
            self.exitcode = 0


class Fleet:
    """Fake children on a fake clock; ``at(t, action)`` scripts what happens when."""

    def __init__(self, names: dict[str, str], **options: object) -> None:
        self.now = 0.0
        self.children: list[FakeChild] = []
        self.script: list[tuple[float, Callable[[], StopRequest | None]]] = []
        self.forgotten_at: list[float] = []
        self.on_start: Callable[[FakeChild], None] = lambda child: None
        specs = [ChildSpec(name, kind, lambda: 0) for name, kind in names.items()]  # type: ignore[arg-type]
        self.supervisor = Supervisor(
            specs,
            options.pop("policy", RestartPolicy(limit=5, window_s=300)),  # type: ignore[arg-type]
            stop_timeout_s=float(options.pop("stop_timeout_s", 35.0)),  # type: ignore[arg-type]
            spawn=self.spawn,
            wait=self.wait,
            clock=lambda: self.now,
            forget=self.forget,
        )

    def spawn(self, spec: ChildSpec) -> FakeChild:
        child = FakeChild(spec.name, 1000 + len(self.children), self.now)
        self.children.append(child)
        self.on_start(child)
        return child

    def wait(self, timeout_s: float) -> StopRequest | None:
        assert timeout_s >= 0
        if self.script and self.script[0][0] <= self.now + timeout_s:
            at, action = self.script.pop(0)
            self.now = max(self.now, at)
            return action()
        self.now += timeout_s
        assert self.now < 10_000, "the supervisor never stopped"
        return None

    def forget(self) -> None:
        self.forgotten_at.append(self.now)

    def at(self, moment: float, action: Callable[[], StopRequest | None]) -> None:
        self.script.append((moment, action))
        self.script.sort(key=lambda step: step[0])

    def kill(self, moment: float, name: str, code: int = -signal.SIGKILL) -> None:
        def die() -> None:
            self.current(name).exitcode = code

        self.at(moment, die)

    def current(self, name: str) -> FakeChild:
        return [c for c in self.children if c.name == name][-1]

    def starts(self, name: str) -> list[float]:
        return [c.started_at for c in self.children if c.name == name]

    def run(self) -> int:
        return self.supervisor.run()


WORKERS_AND_LANE = {"worker-0": "worker", "worker-1": "worker", "suspect-lane": "side"}


def test_a_dead_child_is_restarted_after_a_backoff_while_the_others_run_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = Fleet(WORKERS_AND_LANE)
    fleet.kill(10.0, "worker-0")
    fleet.at(20.0, lambda: SIGTERM)

    assert fleet.run() == 0

    assert fleet.starts("worker-0") == [0.0, 11.0]
    assert fleet.starts("worker-1") == [0.0] and fleet.starts("suspect-lane") == [0.0]
    assert fleet.children[1].signals == [signal.SIGTERM]  # only the stop reached worker-1
    assert fleet.forgotten_at == [10.0, 20.0, 20.0, 20.0, 20.0]  # at each exit, once at the end
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith(
        "worker-0 (pid 1000) exited unexpectedly (killed by SIGKILL); restarting it in 1 s"
    )


def test_the_backoff_doubles_with_each_recent_exit_up_to_30_s() -> None:
    policy = RestartPolicy(limit=100, window_s=3600)
    delays = [policy.after_exit("worker-0", now=float(t)) for t in range(0, 80, 10)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert policy.after_exit("worker-1", now=80.0) == 1  # each child counts its own exits


def test_the_backoff_starts_over_once_old_exits_leave_the_window() -> None:
    policy = RestartPolicy(limit=3, window_s=60)
    assert [policy.after_exit("relay", now=t) for t in (0.0, 10.0, 20.0)] == [1, 2, 4]
    assert policy.after_exit("relay", now=75.0) == 2  # 0 and 10 are out: 20 and 75 count
    assert policy.after_exit("relay", now=200.0) == 1


def test_more_restarts_than_the_limit_within_the_window_is_a_crash_loop() -> None:
    policy = RestartPolicy(limit=2, window_s=60)
    assert policy.after_exit("worker-0", now=0.0) == 1
    assert policy.after_exit("worker-0", now=5.0) == 2
    assert policy.after_exit("worker-0", now=50.0) is None
    assert RestartPolicy(limit=0, window_s=60).after_exit("worker-0", now=0.0) is None


def test_a_crash_loop_gives_up_loudly_and_stops_the_others_gracefully(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = Fleet(WORKERS_AND_LANE, policy=RestartPolicy(limit=2, window_s=60))

    def cannot_start(child: FakeChild) -> None:
        if child.name == "worker-0":
            fleet.kill(fleet.now + 0.5, "worker-0", code=3)

    fleet.on_start = cannot_start

    assert fleet.run() == 1

    assert fleet.starts("worker-0") == [0.0, 1.5, 4.0]  # backoffs 1 s, 2 s; the third exit ends it
    assert [c.signals for c in fleet.children if c.name != "worker-0"] == [[signal.SIGTERM]] * 2
    [critical] = [r for r in caplog.records if r.levelno >= logging.CRITICAL]
    message = critical.getMessage()
    assert message.startswith(
        "worker-0 keeps dying: restarted 2 times within 60 s, it died again (pid 1004, exit code 3"
    )
    assert "could not start: the runtime (keys, database, settings)" in message
    assert "FLEET_WORKER_RESTART_LIMIT=2" in message


def test_a_sigterm_is_forwarded_once_to_each_child_and_a_clean_stop_exits_0() -> None:
    fleet = Fleet({**WORKERS_AND_LANE, "outbox-relay": "side"})
    fleet.at(5.0, lambda: SIGTERM)
    assert fleet.run() == 0
    assert [c.signals for c in fleet.children] == [[signal.SIGTERM]] * 4


def test_a_second_sigterm_is_forwarded_again_and_nothing_restarts_meanwhile() -> None:
    fleet = Fleet(WORKERS_AND_LANE)
    fleet.on_start = lambda child: setattr(child, "stops_on_sigterm", False)
    fleet.at(5.0, lambda: SIGTERM)
    fleet.kill(6.0, "suspect-lane", code=0)
    fleet.at(7.0, lambda: SIGTERM)  # the operator insists: Dramatiq's workers exit at once
    fleet.kill(8.0, "worker-0", code=1)
    fleet.kill(8.0, "worker-1", code=1)
    assert fleet.run() == 1  # not every child stopped cleanly
    assert len(fleet.children) == 3
    assert [c.signals for c in fleet.children] == [[signal.SIGTERM, signal.SIGTERM]] * 2 + [
        [signal.SIGTERM]
    ]


def test_a_terminals_ctrl_c_is_forwarded_only_to_side_processes_the_masters_got_it_too() -> None:
    fleet = Fleet(WORKERS_AND_LANE)
    fleet.at(5.0, lambda: CTRL_C)
    fleet.kill(6.0, "worker-0", code=0)  # each master stops its worker on the SIGINT it got
    fleet.kill(6.0, "worker-1", code=0)
    assert fleet.run() == 0
    assert [c.signals for c in fleet.children] == [[], [], [signal.SIGTERM]]


def test_children_still_running_after_the_stop_timeout_are_killed_and_the_exit_is_1(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = Fleet(WORKERS_AND_LANE, stop_timeout_s=35.0)
    fleet.on_start = lambda child: setattr(child, "stops_on_sigterm", child.name != "worker-1")
    fleet.at(5.0, lambda: SIGTERM)
    assert fleet.run() == 1
    assert fleet.children[1].signals == [signal.SIGTERM, signal.SIGKILL]
    assert 40.0 <= fleet.now <= 41.0  # SIGKILL at 5 + 35 s, reaped at the next wake-up
    assert any("worker-1 (pid 1001) still running 35 s after SIGTERM" in m for m in caplog.messages)


def test_exits_are_described_for_operators() -> None:
    assert describe_exit("worker", -9) == "killed by SIGKILL"
    assert describe_exit("worker", 1).startswith("exit code 1: its worker process died")
    assert describe_exit("side", 1) == "exit code 1"


# -- real processes, real signals -------------------------------------------------------------

SCRIPT = """
import os, signal, sys, threading, time
from pathlib import Path
from workers.supervisor import ChildSpec, RestartPolicy, supervise

state = Path(sys.argv[1])

def dies_once() -> int:
    marker = state / "died"
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    (state / f"steady-{os.getpid()}").touch()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    return 0

def steady() -> int:
    (state / f"other-{os.getpid()}").touch()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    return 0

stop = threading.Event()
specs = [ChildSpec("flaky", "side", dies_once), ChildSpec("steady", "side", steady)]
sys.exit(supervise(specs, RestartPolicy(5, 60), stop_timeout_s=10, forget=lambda: None))
"""


def test_real_children_are_restarted_stopped_by_sigterm_and_die_with_a_killed_supervisor(
    tmp_path: Path,
) -> None:
    def run_supervisor() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(SCRIPT), str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def pids(prefix: str) -> list[int]:
        return [int(p.name.split("-")[1]) for p in tmp_path.glob(f"{prefix}-*")]

    def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)

    supervisor = run_supervisor()
    try:
        wait_until(lambda: bool(pids("steady")) and bool(pids("other")))
        assert (tmp_path / "died").exists()  # killed once, restarted
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(15) == 0
        assert not any(alive(pid) for pid in pids("steady") + pids("other"))

        for stale in tmp_path.glob("*-*"):
            stale.unlink()
        supervisor = run_supervisor()
        wait_until(lambda: bool(pids("steady")) and bool(pids("other")))
        supervisor.kill()
        supervisor.wait(5)
        wait_until(lambda: not any(alive(pid) for pid in pids("steady") + pids("other")), 10)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        for pid in pids("steady") + pids("other"):  # orphans, should a check above have failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "Z"
    return stat[stat.rindex(")") + 2 :].split()[0]
