"""The incremental events reader: each refresh parses only what was appended, whole lines only."""

from __future__ import annotations

import json
from pathlib import Path

from workers.events import EventLog, EventSink


def test_each_refresh_returns_only_what_was_appended_since_the_last(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = EventSink(path)
    log = EventLog(path)
    assert log.refresh() == []  # no file yet: nothing, no error

    sink.emit("ok", message_id="a", queue="billing")
    sink.emit("retried", message_id="b", queue="crm")
    assert [e["message_id"] for e in log.refresh()] == ["a", "b"]
    assert log.refresh() == []

    sink.emit("dead", message_id="b", queue="crm.suspect")
    assert [e["event"] for e in log.refresh()] == ["dead"]
    assert [e["event"] for e in log.events] == ["ok", "retried", "dead"]
    sink.close()


def test_a_line_still_being_written_waits_for_its_end(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    line = json.dumps({"event": "ok", "message_id": "a", "queue": "billing"}) + "\n"
    path.write_text(line[:10])
    log = EventLog(path)
    assert log.refresh() == []
    with path.open("a") as handle:
        handle.write(line[10:])
    assert [e["message_id"] for e in log.refresh()] == ["a"]
    assert len(log.events) == 1


def test_tallies_settled_deliveries_by_work_queue_and_counts_handled(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = EventSink(path)
    for kind, message_id, queue in [
        ("ok", "a", "billing"),
        ("ok", "a", "crm"),
        ("retried", "b", "billing"),
        ("duplicate", "c", "billing.suspect"),
        ("stale", "d", "crm"),
        ("dead", "e", "provisioning"),
        ("suspect", "f", "billing"),
    ]:
        sink.emit(kind, message_id=message_id, queue=queue)
    sink.close()
    log = EventLog(path)
    log.refresh()
    assert log.settled == {
        ("a", "billing"),
        ("a", "crm"),
        ("c", "billing"),
        ("d", "crm"),
        ("e", "provisioning"),
    }
    assert log.handled == 4
    assert [e["queue"] for e in log.by_id["a"]] == ["billing", "crm"]
    assert log.kinds["retried"] == 1


def test_without_keeping_events_the_tallies_still_add_up(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = EventSink(path)
    sink.emit("ok", message_id="a", queue="billing")
    sink.emit("dead", message_id="b", queue="crm")
    sink.close()
    log = EventLog(path, keep_events=False)
    assert [e["message_id"] for e in log.refresh()] == ["a", "b"]
    assert (log.events, dict(log.by_id)) == ([], {})
    assert log.settled == {("a", "billing"), ("b", "crm")}
    assert log.handled == 1
