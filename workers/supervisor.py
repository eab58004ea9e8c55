"""``fleet worker``'s supervisor: every process of the fleet its child, restarted when it dies.

Dramatiq's master stops all its processes when one exits unexpectedly, so one worker killed (the
OOM killer, a crash in C code, a poison message) would stop the whole pod. Here every worker
process has a Dramatiq master of its own (``dramatiq.cli.main --processes 1``: its CLI keeps the
worker's start, signals and stop), and the side processes are children too::

    fleet worker            this supervisor: restarts, signals, the health expectation
    ├── worker-0            Dramatiq master ─▶ its worker process (threads, consumers)
    ├── worker-1            …
    ├── suspect-lane        workers.app:run_suspect_lane ─▶ the lane's own process
    └── outbox-relay, archiver, metrics                      (when enabled)

A child that exits while the fleet is not stopping is restarted after a backoff (1 s, doubling
with each recent exit, at most 30 s); the others keep running; state files of dead pids leave the
health directory. More than ``FLEET_WORKER_RESTART_LIMIT`` restarts of one child within
``FLEET_WORKER_RESTART_WINDOW_S`` is a crash loop: one CRITICAL line, the other children stopped
gracefully, exit 1. Each SIGTERM, SIGINT or SIGHUP is forwarded as one SIGTERM to every child (a
Dramatiq worker that gets a second SIGTERM exits at once), never to the process group; a child
gets SIGTERM from the kernel when the supervisor dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
# Beyond the shutdown timeout: the publisher's close and the process exits.
STOP_MARGIN_S = 15.0
POLL_S = 1.0
# Dramatiq's master waits this long for its worker's "ready" before it starts fork processes; it
# has none, so there is nothing to wait for (a worker that dies booting would stall it 30 s).
WORKER_FORK_TIMEOUT_MS = 100
# SIGHUP too: a Dramatiq master would reload (re-exec) itself on it; here it stops the fleet.
SUPERVISOR_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
SI_KERNEL = 0x80  # siginfo code of a signal the kernel sent: a terminal's Ctrl-C
PR_SET_PDEATHSIG = 1
# What a Dramatiq master's exit code says about its worker process (dramatiq.cli RET_*, and
# workers.middleware.EXIT_RUNTIME_FAILED = 3 like RET_CONNECT).
WORKER_EXITS = {
    1: "its worker process died (killed, or exited unexpectedly: see the line before)",
    2: "its worker process could not import the app",
    3: "its worker process could not start: the runtime (keys, database, settings) could not be "
    "built or the broker was unreachable (its own error is logged before)",
}

Kind = Literal["worker", "side"]


@dataclass(frozen=True)
class ChildSpec:
    """One supervised child: ``main`` runs in the forked process; its result is the exit code."""

    name: str
    kind: Kind
    main: Callable[[], int]


class Child(Protocol):
    @property
    def pid(self) -> int: ...

    @property
    def exitcode(self) -> int | None: ...

    def send(self, signum: int) -> None: ...


@dataclass(frozen=True)
class StopRequest:
    signum: int
    # A terminal's Ctrl-C: the kernel sent SIGINT to the whole foreground group, so each
    # Dramatiq master got it already; one more signal would make its worker exit at once.
    from_terminal: bool = False


@dataclass
class RestartPolicy:
    """Backoff by a child's recent exits; more than ``limit`` restarts in ``window_s``: give up."""

    limit: int
    window_s: float
    first_backoff_s: float = FIRST_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    _exits: dict[str, list[float]] = field(default_factory=dict)

    def after_exit(self, name: str, now: float) -> float | None:
        """Seconds to wait before restarting ``name``, or None: a crash loop, do not restart."""
        recent = [t for t in self._exits.get(name, []) if now - t < self.window_s] + [now]
        self._exits[name] = recent
        if len(recent) > self.limit:
            return None
        return float(min(self.first_backoff_s * 2 ** (len(recent) - 1), self.max_backoff_s))


def describe_exit(kind: Kind, code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    meaning = WORKER_EXITS.get(code) if kind == "worker" else None
    return f"exit code {code}: {meaning}" if meaning else f"exit code {code}"


class Supervisor:
    """Starts the children, restarts those that die, stops them all on a signal or a crash loop.

    ``spawn`` starts a child, ``wait`` sleeps until a signal or the timeout (a stop request or
    None), ``clock`` is monotonic seconds, ``forget`` cleans up after a dead child — all
    replaceable, so the policy runs in unit tests without a process.
    """

    def __init__(
        self,
        specs: Iterable[ChildSpec],
        policy: RestartPolicy,
        *,
        stop_timeout_s: float,
        spawn: Callable[[ChildSpec], Child],
        wait: Callable[[float], StopRequest | None],
        clock: Callable[[], float] = time.monotonic,
        forget: Callable[[], None] = lambda: None,
    ) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self.policy = policy
        self.stop_timeout_s = stop_timeout_s
        self._spawn, self._wait, self._clock, self._forget = spawn, wait, clock, forget
        self.running: dict[str, Child] = {}
        self.due: dict[str, float] = {}  # name ▶ when to restart it
        self.stop_deadline: float | None = None
        self.code = 0
        self._killed = False

    def run(self) -> int:
        """Until every child has stopped; 0 when the fleet stopped on request and cleanly."""
        for spec in self.specs.values():
            self._start(spec)
        while self.running or (self.due and self.stop_deadline is None):
            request = self._wait(self._timeout())
            if request is not None:
                self.stop(request)
            self._reap()
            now = self._clock()
            if self.stop_deadline is None:
                for name in [n for n, at in self.due.items() if at <= now]:
                    del self.due[name]
                    self._start(self.specs[name])
            elif now >= self.stop_deadline and self.running:
                if self._killed:
                    break  # SIGKILLed and still not reaped: nothing more to wait for
                self._kill_the_rest()
        self._forget()
        return self.code

    def stop(self, request: StopRequest, reason: str = "") -> None:
        """Forward SIGTERM once to each child; restart nothing any more."""
        if self.stop_deadline is None:
            self.stop_deadline = self._clock() + self.stop_timeout_s
            log.info(
                "stopping (%s): SIGTERM to %s, waiting at most %g s",
                reason or signal.Signals(request.signum).name,
                ", ".join(self.running) or "no child",
                self.stop_timeout_s,
            )
        self.due.clear()
        for name, child in self.running.items():
            if request.from_terminal and self.specs[name].kind == "worker":
                continue
            child.send(signal.SIGTERM)

    def _start(self, spec: ChildSpec) -> None:
        child = self._spawn(spec)
        self.running[spec.name] = child
        log.info("%s started (pid %s)", spec.name, child.pid)

    def _timeout(self) -> float:
        now = self._clock()
        until = [now + POLL_S]
        if self.stop_deadline is not None:
            until.append(self.stop_deadline)
        else:
            until.extend(self.due.values())
        return max(0.0, min(until) - now)

    def _reap(self) -> None:
        for name, child in list(self.running.items()):
            code = child.exitcode
            if code is None:
                continue
            del self.running[name]
            self._forget()
            kind = self.specs[name].kind
            if self.stop_deadline is not None:
                if code != 0:
                    log.warning(
                        "%s (pid %s) stopped: %s", name, child.pid, describe_exit(kind, code)
                    )
                    self.code = 1
                continue
            delay = self.policy.after_exit(name, self._clock())
            if delay is None:
                self._give_up(name, child.pid, describe_exit(kind, code))
                continue
            self.due[name] = self._clock() + delay
            log.warning(
                "%s (pid %s) exited unexpectedly (%s); restarting it in %g s, the others run on",
                name,
                child.pid,
                describe_exit(kind, code),
                delay,
            )

    def _give_up(self, name: str, pid: int, exit_: str) -> None:
        policy = self.policy
        log.critical(
            "%s keeps dying: restarted %d times within %g s, it died again (pid %s, %s); not "
            "restarting it, stopping the fleet (exit 1). Fix the cause and start it again "
            "(FLEET_WORKER_RESTART_LIMIT=%d restarts per FLEET_WORKER_RESTART_WINDOW_S=%g)",
            name,
            policy.limit,
            policy.window_s,
            pid,
            exit_,
            policy.limit,
            policy.window_s,
        )
        self.code = 1
        self.stop(StopRequest(signal.SIGTERM), f"{name} keeps dying")

    def _kill_the_rest(self) -> None:
        log.error(
            "%s still running %g s after SIGTERM: SIGKILL",
            ", ".join(f"{n} (pid {c.pid})" for n, c in self.running.items()),
            self.stop_timeout_s,
        )
        for child in self.running.values():
            child.send(signal.SIGKILL)
        self.code = 1
        self._killed = True
        self.stop_deadline = self._clock() + POLL_S * 5


# -- the real processes ---------------------------------------------------------------------------


class ForkedChild:
    """A child forked with multiprocessing (it inherits the supervisor's imports)."""

    def __init__(self, spec: ChildSpec) -> None:
        context = multiprocessing.get_context("fork")
        self._process = context.Process(
            target=_child_main, args=(spec, os.getpid()), name=spec.name, daemon=False
        )
        self._process.start()

    @property
    def pid(self) -> int:
        return int(self._process.pid or 0)

    @property
    def exitcode(self) -> int | None:
        return self._process.exitcode

    def send(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)


def _child_main(spec: ChildSpec, supervisor: int) -> None:
    # The supervisor blocks its signals (it takes them with sigtimedwait): a Dramatiq master
    # installs its handlers, then unblocks SIGTERM and SIGINT itself; a side process is set up
    # as Dramatiq sets up a fork process.
    if spec.kind == "side":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _exit_quietly)
        signal.signal(signal.SIGHUP, _exit_quietly)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)
    else:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    die_with_parent(signal.SIGTERM, supervisor)
    sys.exit(spec.main())


def _exit_quietly(_signum: int, _frame: object) -> None:
    sys.exit(0)


def die_with_parent(signum: int, parent: int | None = None) -> None:
    """Ask the kernel for ``signum`` when this process's parent dies (Linux; else nothing).

    ``parent``: the pid expected as parent; if it died already, the signal comes now.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        log.warning("cannot set PR_SET_PDEATHSIG: errno %d", ctypes.get_errno())
        return
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signum)


def wait_for_signal(timeout_s: float) -> StopRequest | None:
    """Sleep until SIGTERM/SIGINT/SIGHUP (a stop request), SIGCHLD or the timeout (None)."""
    info = signal.sigtimedwait(SUPERVISOR_SIGNALS, timeout_s)
    if info is None or info.si_signo == signal.SIGCHLD:
        return None
    from_terminal = info.si_signo == signal.SIGINT and info.si_code == SI_KERNEL
    return StopRequest(info.si_signo, from_terminal)


def worker_spec(index: int, argv: list[str]) -> ChildSpec:
    """A worker process under a Dramatiq master of its own (``--processes 1``, no forks)."""
    args = [
        *argv[:1],
        "--processes",
        "1",
        "--worker-fork-timeout",
        str(WORKER_FORK_TIMEOUT_MS),
        *argv[1:],
    ]

    def main() -> int:
        import dramatiq.cli

        logging.getLogger("dramatiq.MainProcess").addFilter(_demote_worker_exit)
        return int(dramatiq.cli.main(dramatiq.cli.make_argument_parser().parse_args(args)))

    return ChildSpec(f"worker-{index}", "worker", main)


def _demote_worker_exit(record: logging.LogRecord) -> bool:
    """A master's "Worker with PID … exited unexpectedly. Shutting down..." is CRITICAL in
    Dramatiq, where it stops every process; here it stops one, which the supervisor restarts
    (its own line says so), so the master's line is a WARNING and CRITICAL stays for a crash loop.
    """
    if record.levelno == logging.CRITICAL and str(record.msg).startswith("Worker with PID"):
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
    return True


def side_spec(name: str, function_path: str) -> ChildSpec:
    """A process main (``module:function``, imported in the child) beside the workers."""

    def main() -> int:
        module, _, attribute = function_path.partition(":")
        function: Callable[[], int | None] = getattr(importlib.import_module(module), attribute)
        return int(function() or 0)

    return ChildSpec(name, "side", main)


def supervise(
    specs: list[ChildSpec],
    policy: RestartPolicy,
    *,
    stop_timeout_s: float,
    forget: Callable[[], None],
) -> int:
    """Run the children until stopped (see the module docstring); the exit code of the fleet."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
    try:
        supervisor = Supervisor(
            specs,
            policy,
            stop_timeout_s=stop_timeout_s,
            spawn=ForkedChild,
            wait=wait_for_signal,
            forget=forget,
        )
        return supervisor.run()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)
