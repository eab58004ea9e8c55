"""Crashes, poison and restarts with real worker processes; every scenario ends with the ledger."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from queues.contracts import Contract
from tests.support.factories import sample
from tests.support.fleet import FleetUnderTest, Supervisor, fleet_under_test
from tests.support.rabbit import AMQP_PORT
from tests.support.tcp_proxy import tcp_proxy
from workers.local import group_alive
from workers.observability.health import check_health, read_states

pytestmark = [pytest.mark.broker, pytest.mark.db, pytest.mark.slow]


def seeded_random() -> random.Random:
    """Random choices that a failure can repeat: the seed is printed (pytest shows it with the
    failure); ``TEST_SEED=<seed>`` runs the same choices again."""
    seed = int(os.environ.get("TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"random seed {seed} (TEST_SEED={seed} repeats it)")
    return random.Random(seed)


# Batches forced on: the writer waits for company, so batches of several are the rule here.
BATCHES = {"FLEET_BATCH_WAIT_MS": "20"}


def workload(accounts: int, charges_per_account: int) -> tuple[list[Contract], list[Contract]]:
    """Account opens and their charges (charges of the last account arrive before it opens)."""
    ids = [uuid.uuid4() for _ in range(accounts)]
    opens = [sample("billing.account.open", account_id=a) for a in ids]
    charges = [
        sample("billing.charge.post", account_id=a) for a in ids for _ in range(charges_per_account)
    ]
    return opens, charges


@pytest.mark.parametrize(
    "point",
    ["before_commit", "mid_batch", "after_commit_before_ack", "after_retry_publish_before_ack"],
)
def test_sigkill_at_each_fault_point_loses_and_doubles_nothing(tmp_path: Path, point: str) -> None:
    marker = tmp_path / "crashed"
    # Enough attempts that the late account's charges outlive the crash and restart.
    env = {"FLEET_FAULT_AT": point, "FLEET_FAULT_MARKER": str(marker), "FLEET_MAX_ATTEMPTS": "100"}
    with fleet_under_test(tmp_path, env={**env, **BATCHES}) as fleet:
        opens, charges = workload(accounts=20, charges_per_account=10)
        late_open = opens.pop()
        supervisor = Supervisor(fleet, processes=2, threads=4)
        fleet.publish(charges[-10:])  # the late account's charges: NotYet, so retries happen
        fleet.publish(opens, "order-management")
        fleet.publish(charges[:-10])
        fleet.wait_for(marker.exists, timeout_s=60, what=f"a crash at {point}")
        fleet.publish([late_open], "order-management")
        fleet.wait_settled(timeout_s=120, supervise=supervisor)
        report = fleet.ledger()
        assert report.ok, report.summary()
        assert not report.dead_by_reason, report.summary()
        assert marker.exists(), f"the fleet never reached {point}"
        totals = fleet.query("SELECT count(*), coalesce(sum(amount_minor), 0) FROM billing_charges")
        assert totals == [(len(charges), sum(c.amount.amount_minor for c in charges))]  # type: ignore[attr-defined]
        assert fleet.largest_batch() >= 2, "no batch of two or more: the batch path went untried"


def test_a_message_that_kills_its_worker_dies_alone_in_the_suspect_lane(tmp_path: Path) -> None:
    poison = sample("crm.interaction.log")
    poison_id = str(uuid.uuid4())
    env = {"FLEET_FAULT_CRASH_MESSAGE_IDS": json.dumps([poison_id])}
    with fleet_under_test(tmp_path, env=env) as fleet:
        supervisor = Supervisor(fleet, processes=2, threads=4)
        healthy = [sample("crm.interaction.log") for _ in range(150)]
        fleet.publish(healthy[:75], "self-care")
        fleet.publish(
            [fleet.seal(poison, "self-care", message_id=uuid.UUID(poison_id))], "self-care"
        )
        fleet.publish(healthy[75:], "self-care")
        expected = fleet.expected() - {(poison_id, "crm")}
        fleet.wait_for(
            lambda: (
                (supervisor() or True)
                and expected <= fleet.settled()
                and fleet.depth("crm.dead") == 1
            ),
            timeout_s=180,
            what="healthy messages processed and the poison dead-lettered",
        )
        report = fleet.ledger(poison=[poison_id])
        assert report.ok, report.summary()
        assert report.dead_by_reason == {"delivery_limit": 1}
        assert report.processed["ok"] == 150
        suspects = {e["message_id"] for e in fleet.events() if e["event"] == "suspect"}
        assert poison_id in suspects


def test_five_sigterms_during_a_run_lose_double_and_kill_nothing(tmp_path: Path) -> None:
    rng = seeded_random()
    with fleet_under_test(tmp_path, env={"FLEET_SHUTDOWN_TIMEOUT_S": "8", **BATCHES}) as fleet:

        def nothing_committed_came_back() -> None:
            # What a stopping worker had in hand it finished and acked: a message whose effect
            # committed and that went back to its queue anyway meets the inbox as a duplicate
            duplicates = [e for e in fleet.events() if e["event"] == "duplicate"]
            if duplicates:
                pytest.fail(f"committed, yet returned to the queue: {duplicates[:3]}")

        opens, charges = workload(accounts=40, charges_per_account=100)
        fleet.publish(opens, "order-management")
        # Published over ~30 s, so that every SIGTERM lands in a run, however fast the drain.
        upstream = fleet.upstream(charges, batch=100, interval_s=0.75)
        process = fleet.start_workers(processes=2, threads=4)
        for _ in range(5):
            seen = len(fleet.events())
            fleet.wait_for(
                lambda seen=seen: len(fleet.events()) > seen, what="the restarted fleet at work"
            )
            time.sleep(rng.uniform(0.1, 0.8))
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise AssertionError("the worker did not exit by itself after SIGTERM") from None
            assert code == 0, "the worker did not stop cleanly"
            nothing_committed_came_back()
            process = fleet.start_workers(processes=2, threads=4)
        upstream.finish(timeout_s=120)
        fleet.wait_settled(timeout_s=180, supervise=nothing_committed_came_back)
        nothing_committed_came_back()
        assert fleet.largest_batch() >= 2, "no batch of two or more: the batch path went untried"
        report = fleet.ledger()
        assert report.ok, report.summary()
        assert not report.dead_by_reason, report.summary()
        assert fleet.query("SELECT count(*) FROM billing_charges") == [(len(charges),)]


def _activations(fleet: FleetUnderTest, count: int) -> None:
    accounts = [uuid.uuid4() for _ in range(count)]
    fleet.publish(
        [sample("billing.account.open", account_id=a) for a in accounts], "order-management"
    )
    fleet.publish(
        [sample("provisioning.service.activate", account_id=a) for a in accounts],
        "order-management",
    )


def _follow_ups(fleet: FleetUnderTest) -> set[str]:
    return {str(m) for (m,) in fleet.query("SELECT message_id FROM outbox")}


def _unsent(fleet: FleetUnderTest) -> int:
    return int(fleet.query("SELECT count(*) FROM outbox WHERE sent_at IS NULL")[0][0])


def _claimed_by_a_relay(fleet: FleetUnderTest) -> bool:
    """A relay's pass holds its claim: the table lock of its ``FOR UPDATE`` (other sessions)."""
    held = fleet.query(
        "SELECT count(*) FROM pg_locks WHERE relation = 'outbox'::regclass"
        " AND mode = 'RowShareLock' AND pid <> pg_backend_pid()"
    )
    return bool(held[0][0])


def _claimable(fleet: FleetUnderTest) -> int:
    """Unsent rows no relay holds (locked for an instant, as a relay's pass would)."""
    return int(
        fleet.query(
            "SELECT count(*) FROM (SELECT id FROM outbox WHERE sent_at IS NULL"
            " FOR UPDATE SKIP LOCKED) AS free"
        )[0][0]
    )


def test_follow_ups_committed_before_a_crash_are_relayed_after_restart(tmp_path: Path) -> None:
    marker = tmp_path / "crashed"
    env = {"FLEET_FAULT_AT": "relay_after_claim_before_publish", "FLEET_FAULT_MARKER": str(marker)}
    with fleet_under_test(tmp_path, env=env) as fleet:
        # Given workers whose outbox relay dies once: after claiming committed follow-ups,
        # before publishing them
        workers = fleet.start_workers(processes=1, threads=4, outbox_relay=True)
        _activations(fleet, 20)
        fleet.wait_for(marker.exists, what="the relay to crash between its claim and its publish")
        fleet.wait_for(
            lambda: fleet.query("SELECT count(*) FROM outbox")[0][0] == 40, what="40 outbox rows"
        )
        # Then nothing was published, and the claim died with the relay
        assert fleet.query(
            "SELECT count(*), coalesce(max(attempts), 0) FROM outbox WHERE sent_at IS NULL"
        ) == [(40, 0)]
        assert _claimable(fleet) == 40
        follow_ups = _follow_ups(fleet)
        assert [e for e in fleet.events() if e["message_id"] in follow_ups] == []

        # When the fleet restarts (its relay has crashed once: the marker keeps it from again)
        fleet.local.signal(workers, signal.SIGKILL)
        workers.wait(10)
        fleet.start_workers(processes=1, threads=4, outbox_relay=True)
        fleet.wait_settled()

        # Then every follow-up is relayed, in one pass each, and processed once
        report = fleet.ledger()
        assert report.ok, report.summary()
        assert fleet.query(
            "SELECT count(*), max(attempts) FROM outbox WHERE sent_at IS NOT NULL"
        ) == [(40, 1)]
        outcomes = [e["event"] for e in fleet.events() if e["message_id"] in follow_ups]
        assert sorted(set(outcomes)) == ["ok"], outcomes
        assert fleet.query("SELECT count(*) FROM billing_charges") == [(20,)]


def test_follow_ups_published_just_before_the_relay_died_are_sent_again_and_absorbed(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "crashed"
    env = {"FLEET_FAULT_AT": "relay_after_publish_before_commit", "FLEET_FAULT_MARKER": str(marker)}
    with fleet_under_test(tmp_path, env=env) as fleet:
        fleet.start_workers(processes=1, threads=4, outbox_relay=False)
        _activations(fleet, 20)
        fleet.wait_for(
            lambda: fleet.query("SELECT count(*) FROM outbox")[0][0] == 40, what="40 outbox rows"
        )
        follow_ups = _follow_ups(fleet)
        # Given a relay that dies once: its publish of all 40 confirmed, its commit not made
        first = fleet.local.spawn("relay-1", ["outbox", "relay", "--metrics-port", "0"])
        assert first.wait(60) != 0 and marker.exists(), "the relay did not crash after publishing"
        # Then no row is marked sent, though the broker confirmed what the relay published
        assert _unsent(fleet) == 40

        # When a relay runs again (the marker keeps it from crashing)
        fleet.local.spawn("relay-2", ["outbox", "relay", "--metrics-port", "0"])
        fleet.wait_for(lambda: _unsent(fleet) == 0, what="the second relay sending them again")

        # Then every follow-up came twice, and the inbox absorbed the second copy: each
        # follow-up's effect once
        def outcomes(kind: str) -> list[str]:
            return sorted(
                e["message_id"]
                for e in fleet.events()
                if e["event"] == kind and e["message_id"] in follow_ups
            )

        fleet.wait_for(lambda: len(outcomes("duplicate")) == 40, what="the second copies absorbed")
        fleet.wait_settled()
        assert outcomes("ok") == outcomes("duplicate") == sorted(follow_ups)
        report = fleet.ledger()
        assert report.ok, report.summary()
        assert fleet.query("SELECT count(*) FROM billing_charges") == [(20,)]


def test_two_relays_at_once_publish_each_follow_up_once(tmp_path: Path) -> None:
    with (
        tcp_proxy(("127.0.0.1", AMQP_PORT)) as broker_link,
        fleet_under_test(tmp_path) as fleet,
    ):
        fleet.start_workers(processes=2, threads=4, outbox_relay=False)
        _activations(fleet, 150)
        fleet.wait_for(
            lambda: fleet.query("SELECT count(*) FROM outbox")[0][0] == 300,
            timeout_s=120,
            what="300 outbox rows",
        )
        # Given relay A in the middle of a pass: it claimed a batch (200 rows) and cannot
        # publish it yet (its broker link is stalled)
        broker_link.stall()
        stalled_url = fleet.url.replace(f":{AMQP_PORT}/", f":{broker_link.port}/")
        fleet.local.spawn(
            "relay-a",
            ["outbox", "relay", "--metrics-port", "0"],
            extra={"FLEET_AMQP_URL": stalled_url, "FLEET_PUBLISH_TIMEOUT_S": "300"},
        )
        fleet.wait_for(
            lambda: _claimed_by_a_relay(fleet), timeout_s=60, what="relay A to claim a batch"
        )
        assert _claimable(fleet) == 100

        # When relay B runs at the same time
        fleet.local.spawn("relay-b", ["outbox", "relay", "--metrics-port", "0"])

        # Then B publishes the rows A did not claim, while A still holds its claim
        fleet.wait_for(lambda: _unsent(fleet) <= 200, timeout_s=60, what="relay B to publish")
        assert _unsent(fleet) == 200 and _claimable(fleet) == 0

        # And once A's link is back, A publishes its batch: each follow-up published once
        broker_link.restore()
        fleet.wait_settled()
        assert fleet.query(
            "SELECT count(*), max(attempts) FROM outbox WHERE sent_at IS NOT NULL"
        ) == [(300, 1)]
        follow_ups = _follow_ups(fleet)
        duplicates = [
            e for e in fleet.events() if e["event"] == "duplicate" and e["message_id"] in follow_ups
        ]
        assert duplicates == []
        report = fleet.ledger()
        assert report.ok, report.summary()


def test_scaling_out_and_in_during_a_run_loses_and_doubles_nothing(tmp_path: Path) -> None:
    with fleet_under_test(tmp_path, env=BATCHES) as fleet:
        opens, charges = workload(accounts=40, charges_per_account=100)
        fleet.publish(opens, "order-management")
        upstream = fleet.upstream(charges, batch=100, interval_s=0.4)  # a run of ~16 s

        def progress(beyond: int) -> None:
            fleet.wait_for(lambda: len(fleet.events()) > beyond, what="the fleet at work")

        first = fleet.start_workers(name="replica-1", processes=1, threads=4)
        progress(100)
        second = fleet.start_workers(name="replica-2", processes=2, threads=4)  # scale out
        progress(len(fleet.events()) + 100)
        assert fleet.local.stop(first, timeout_s=30) == 0  # scale in, gracefully
        fleet.start_workers(name="replica-3", processes=1, threads=4)
        progress(len(fleet.events()) + 100)
        fleet.local.signal(second, signal.SIGKILL)  # one replica dies hard
        second.wait(10)
        upstream.finish(timeout_s=120)
        fleet.wait_settled(timeout_s=180)
        report = fleet.ledger()
        assert report.ok, report.summary()
        assert fleet.largest_batch() >= 2, "no batch of two or more: the batch path went untried"
        assert not report.dead_by_reason, report.summary()
        assert fleet.query("SELECT count(*) FROM billing_charges") == [(len(charges),)]


def _worker_pids(health_dir: Path) -> set[int]:
    """Dramatiq worker processes that report (the suspect lane's process has role "suspect")."""
    return {
        int(state["pid"])
        for state in read_states(health_dir)
        if state.get("role") == "worker" and "pid" in state
    }


def test_a_worker_process_killed_is_restarted_while_the_other_works_on(tmp_path: Path) -> None:
    health_dir = tmp_path / "health"
    env = {"FLEET_HEALTH_DIR": str(health_dir), "FLEET_HEALTH_INTERVAL_S": "1", **BATCHES}
    with fleet_under_test(tmp_path, env=env) as fleet:
        opens, charges = workload(accounts=20, charges_per_account=100)
        fleet.publish(opens, "order-management")
        upstream = fleet.upstream(charges, batch=100, interval_s=0.5)  # a run of ~10 s
        process = fleet.start_workers(processes=2, threads=4)
        fleet.wait_for(lambda: len(_worker_pids(health_dir)) == 2, what="two worker processes")
        fleet.wait_for(lambda: len(fleet.events()) > 200, what="the fleet at work")

        # When one worker process (not fleet worker, not its group) is SIGKILLed mid-run
        victim, survivor = sorted(_worker_pids(health_dir))
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()

        # Then a replacement reports, the dead pid's health state is gone, fleet worker runs on
        fleet.wait_for(
            lambda: len(_worker_pids(health_dir) - {survivor, victim}) == 1,
            timeout_s=30,
            what="a replacement worker process",
        )
        [replacement] = _worker_pids(health_dir) - {survivor, victim}
        assert not (health_dir / f"worker-{victim}.json").exists()
        assert process.poll() is None, "fleet worker stopped"
        replaced_at = float(
            json.loads((health_dir / f"worker-{replacement}.json").read_text())["started_at"]
        )
        # and the other worker process went on processing meanwhile
        meanwhile = [
            e for e in fleet.events() if e["pid"] == survivor and killed_at < e["at"] < replaced_at
        ]
        assert meanwhile, "the surviving worker process did nothing while the other was down"
        fleet.wait_for(
            lambda: any(e["pid"] == replacement for e in fleet.events()),
            what="the replacement at work",
        )
        upstream.finish(timeout_s=120)
        fleet.assert_charged_exactly_once(len(charges))
        log = (tmp_path / "logs" / "worker.log").read_text()
        assert f"Worker with PID {victim} exited unexpectedly (code -9)" in log
        assert "exited unexpectedly (exit code 1: its worker process died" in log
        assert "restarting it in 1 s, the others run on" in log
        assert "CRITICAL" not in log
        verdict = check_health(health_dir, max_stale_s=30, max_busy_s=300)
        assert verdict.ok, verdict.reason
        assert verdict.reason.startswith("ok: 3 worker processes"), verdict.reason
        assert fleet.local.stop(process, timeout_s=60) == 0


def test_a_worker_that_cannot_start_makes_fleet_worker_give_up_loudly(tmp_path: Path) -> None:
    # Given a keys file that does not exist: every worker process fails to build its runtime
    env = {
        "FLEET_KEYS_FILE": str(tmp_path / "no-such-keys.json"),
        "FLEET_HEALTH_DIR": str(tmp_path / "health"),
        "FLEET_WORKER_RESTART_LIMIT": "2",
        "FLEET_WORKER_RESTART_WINDOW_S": "60",
    }
    with fleet_under_test(tmp_path, env=env) as fleet:
        started = time.monotonic()
        process = fleet.start_workers(processes=2, threads=2, outbox_relay=False, log_format="json")
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                "fleet worker kept restarting a worker that cannot start"
            ) from None
        # Then fleet worker exits 1 after two restarts of one child (backoffs 1 s and 2 s),
        assert code == 1
        assert time.monotonic() - started < 30
        # having stopped every other child (the suspect lane, the other worker)
        fleet.wait_for(lambda: not group_alive(process.pid), timeout_s=10, what="no child left")
        lines = [
            json.loads(line)
            for line in (tmp_path / "logs" / "worker.log").read_text().splitlines()
            if line.startswith("{")
        ]
        supervisor = [line for line in lines if line["logger"] == "workers.supervisor"]
        restarts = [line for line in supervisor if "restarting it in" in line["message"]]
        assert len(restarts) >= 2
        # with one CRITICAL line that names the child and the cause
        [critical] = [line for line in lines if line["level"] == "CRITICAL"]
        assert critical["logger"] == "workers.supervisor"
        message = critical["message"]
        assert (
            message.startswith("worker-")
            and " keeps dying: restarted 2 times within 60 s, it died again" in message
        )
        assert "could not start: the runtime (keys, database, settings)" in message
        assert "FLEET_WORKER_RESTART_LIMIT=2" in message
