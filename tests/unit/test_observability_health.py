"""Health files and the verdict read from them: staleness, stuck threads, readiness."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from workers.commands.health import health
from workers.observability.health import (
    ProcessHealth,
    check_health,
    expect_worker_processes,
    forget_stopped_processes,
    state_path,
)

NOW = 1_800_000_000.0
DEAD_PID = 2**22 + 12345  # above Linux's pid_max: never a live process


def healthy_state(now: float = NOW) -> ProcessHealth:
    state = ProcessHealth(["billing", "crm"], now=now - 60)
    state.consumers = {"billing": True, "crm": True}
    state.database_checked(0.0012)
    state.database["last_ok_at"] = now - 1
    state.message_started("Thread-3", "m-1", now=now - 2)
    state.message_finished("Thread-3", now=now - 1)
    return state


def verdict(directory: Path, now: float = NOW, **options: object) -> tuple[bool, str]:
    result = check_health(
        directory,
        max_stale_s=30,
        max_busy_s=300,
        now=now,
        **options,  # type: ignore[arg-type]
    )
    return result.ok, result.reason


def test_a_freshly_written_state_is_healthy(tmp_path: Path) -> None:
    healthy_state().write(tmp_path, now=NOW - 1)
    ok, reason = verdict(tmp_path)
    assert ok, reason
    assert reason.startswith("ok: 1 worker processes, 1 threads, none stuck, consumers connected")


def test_a_state_not_rewritten_within_the_bound_is_stale(tmp_path: Path) -> None:
    healthy_state().write(tmp_path, now=NOW - 31)
    ok, reason = verdict(tmp_path)
    assert not ok and "state not written for 31 s (> 30 s)" in reason
    assert not verdict(tmp_path, liveness=True)[0]


def test_a_thread_busy_beyond_the_bound_is_stuck_even_for_liveness(tmp_path: Path) -> None:
    state = healthy_state()
    state.message_started("Thread-4", "m-stuck", now=NOW - 301)
    state.write(tmp_path, now=NOW)
    for liveness in (False, True):
        ok, reason = verdict(tmp_path, liveness=liveness)
        assert not ok and "thread Thread-4 stuck: busy 301 s (> 300 s) on message m-stuck" in reason


def test_a_busy_thread_within_the_bound_and_an_idle_one_are_fine(tmp_path: Path) -> None:
    state = healthy_state()
    state.message_started("Thread-4", "m-slow", now=NOW - 299)
    state.write(tmp_path, now=NOW)
    assert verdict(tmp_path)[0]


def test_readiness_needs_consumers_and_the_database_liveness_does_not(tmp_path: Path) -> None:
    state = healthy_state()
    state.consumers["crm"] = False
    state.write(tmp_path, now=NOW)
    ok, reason = verdict(tmp_path)
    assert not ok and "consumer not connected: crm" in reason
    assert verdict(tmp_path, liveness=True)[0]

    state.consumers["crm"] = True
    state.database_checked(None, "OperationalError")
    state.database["last_ok_at"] = NOW - 45
    state.write(tmp_path, now=NOW)
    ok, reason = verdict(tmp_path)
    assert not ok and "no successful database round trip for 45 s (OperationalError)" in reason
    assert verdict(tmp_path, liveness=True)[0]


def test_a_process_that_is_shutting_down_is_not_ready_but_alive(tmp_path: Path) -> None:
    state = healthy_state()
    state.stopping = True
    state.write(tmp_path, now=NOW)
    assert verdict(tmp_path) == (False, f"pid {os.getpid()} (worker): shutting down")
    assert verdict(tmp_path, liveness=True)[0]


def test_files_of_stopped_processes_are_ignored_and_none_live_is_unhealthy(tmp_path: Path) -> None:
    state = healthy_state()
    state.pid = DEAD_PID
    state.write(tmp_path, now=NOW)
    ok, reason = verdict(tmp_path)
    assert not ok and "no live worker process" in reason and "1 files of stopped" in reason
    forget_stopped_processes(tmp_path)
    assert not state_path(tmp_path, DEAD_PID).exists()
    assert verdict(tmp_path)[1].startswith("no live worker process wrote state")
    assert "no health directory" in verdict(tmp_path / "missing")[1]


def test_fewer_processes_than_the_master_expects_is_not_ready(tmp_path: Path) -> None:
    healthy_state().write(tmp_path, now=NOW)
    expect_worker_processes(tmp_path, 3)
    assert verdict(tmp_path) == (False, "only 1 of 3 worker processes report")
    assert verdict(tmp_path, liveness=True)[0]


def test_an_unreadable_state_file_is_unhealthy(tmp_path: Path) -> None:
    (tmp_path / "worker-1.json").write_text("{torn")
    ok, reason = verdict(tmp_path)
    assert not ok and "unreadable state file" in reason


def test_the_state_file_is_json_written_atomically(tmp_path: Path) -> None:
    path = healthy_state().write(tmp_path, now=NOW)
    state = json.loads(path.read_text())
    assert state["pid"] == os.getpid() and state["role"] == "worker"
    assert state["database"]["round_trip_s"] == pytest.approx(0.0012)
    assert state["threads"]["Thread-3"]["processed"] == 1
    assert list(tmp_path.iterdir()) == [path]


def test_fleet_health_exits_0_or_1_with_one_line(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(health)
    healthy_state(now=time.time()).write(tmp_path)
    result = CliRunner().invoke(app, ["--dir", str(tmp_path)])
    assert result.exit_code == 0 and len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["--dir", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "no health directory" in result.output
