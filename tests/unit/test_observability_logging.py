"""Log lines carry the message context and never a payload value, whatever the code raises."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import sqlalchemy.exc
from pydantic import BaseModel

from queues.envelope import OpenedMessage, seal
from queues.keys import KeyRegistry
from tests.support.factories import sample
from tests.support.lifecycle import delivery_of_sealed, drive
from workers.observability.logging import (
    EVENTS_LOGGER,
    MAX_MESSAGE_CHARS,
    WITHHELD,
    JsonFormatter,
    TextFormatter,
    configure_logging,
)

SECRET = "Planted-Secret-7f3a9c"


class _Strict(BaseModel):
    amount: int


def leaky_apply(queue: str, opened: OpenedMessage) -> str:
    """A buggy handler whose exceptions quote the payload in every way they can."""
    name = opened.payload.name  # type: ignore[attr-defined]
    try:
        _Strict.model_validate({"amount": name})
    except Exception as validation:
        try:
            raise sqlalchemy.exc.IntegrityError(
                "INSERT ...", {"name": name}, Exception(f"DETAIL: Key (name)=({name})")
            ) from validation
        except sqlalchemy.exc.IntegrityError as integrity:
            raise ValueError(f"cannot handle {name}") from integrity
    return "ok"


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, restored afterwards (handlers, level, the events logger's state)."""
    root, events = logging.getLogger(), logging.getLogger(EVENTS_LOGGER)
    saved = (list(root.handlers), root.level, events.level, list(events.filters))
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    events.setLevel(saved[2])
    events.filters[:] = saved[3]


def capture(root: logging.Logger, formatter: logging.Formatter) -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    return stream


def run_leaky_message(keys: KeyRegistry) -> str:
    driven = drive(keys, leaky_apply)
    sealed = seal(sample("crm.customer.upsert", name=SECRET), keys.sealing_key("self-care"))
    delivery = delivery_of_sealed(sealed, "crm")
    driven.process(delivery)
    logging.getLogger("dramatiq.worker.WorkerThread").error(
        "Failed to process message %s with unhandled exception.",
        f"crm__crm_customer_upsert({delivery!r})",
    )
    return str(sealed.message_id)


def test_json_lines_carry_the_context_and_never_the_payload(
    keys: KeyRegistry, root_logging: logging.Logger
) -> None:
    stream = capture(root_logging, JsonFormatter())
    message_id = run_leaky_message(keys)
    output = stream.getvalue()
    lines = [json.loads(line) for line in output.splitlines()]

    assert SECRET not in output
    assert {"time", "level", "logger", "message", "pid", "thread"} <= set(lines[0])
    [failure] = [line for line in lines if line["message"].startswith("unexpected error")]
    assert failure["message_id"] == message_id
    assert failure["type"] == "crm.customer.upsert" and failure["queue"] == "crm"
    assert failure["error_class"] == "ValueError"
    assert "amount: int_parsing" in failure["traceback"]  # the validation error, without its input
    assert WITHHELD in failure["traceback"]
    [retried] = [line for line in lines if line.get("event") == "retried"]
    assert retried["level"] == "WARNING" and retried["reason"] == "unexpected_error"
    assert retried["message_id"] == message_id and retried["tier"] == "5s"
    assert all(len(line["message"]) <= MAX_MESSAGE_CHARS + 40 for line in lines)


def test_text_lines_carry_the_context_and_never_the_payload(
    keys: KeyRegistry, root_logging: logging.Logger
) -> None:
    stream = capture(root_logging, TextFormatter())
    message_id = run_leaky_message(keys)
    output = stream.getvalue()
    assert SECRET not in output
    assert f"[{message_id} crm.customer.upsert crm]" in output
    assert "ValueError: " + WITHHELD in output


def test_successes_are_debug_or_a_sampled_share_at_info(
    keys: KeyRegistry, root_logging: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    driven = drive(keys, lambda queue, opened: "ok")
    key = keys.sealing_key("order-management")

    configure_logging("json", "INFO", success_sample_rate=0.0)
    driven.process(delivery_of_sealed(seal(sample("billing.account.open"), key), "billing"))
    assert capsys.readouterr().err == ""

    configure_logging("json", "INFO", success_sample_rate=1.0)
    driven.process(delivery_of_sealed(seal(sample("billing.account.open"), key), "billing"))
    [line] = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    assert line["event"] == "ok" and line["level"] == "INFO" and line["sampled"] is True
    assert line["queue"] == "billing" and "age_s" in line and "duration_s" in line
