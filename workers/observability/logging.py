"""Log lines of the fleet: JSON (one object per line) or text, with the message context.

``configure_logging`` runs once in ``fleet worker`` before it forks (Dramatiq's own set-up is
skipped with ``--skip-logging``), so the supervisor, the Dramatiq masters, the worker processes and
the side processes all log the same way. The handler writes to whatever ``sys.stderr`` is at the
time: in a worker process Dramatiq points it at the pipe its master reads; every process writes
whole lines, so lines of several processes never interleave.

A JSON line carries ``time``, ``level``, ``logger``, ``message``, ``pid``, ``thread`` and, while a
worker thread handles a message, ``message_id``, ``type`` and ``queue``
(``workers.observability.context``). Outcome events (``fleet.events``) add their fields: failures
come at WARNING, successes at DEBUG — or a sampled share of them at INFO.

Never payload values. The fleet's own errors and events carry none by construction. In a
traceback, a pydantic ``ValidationError`` is reduced to field locations and error kinds, and the
text of any other exception is kept only for kinds that describe infrastructure (``FleetError``,
``OSError``, connection-level SQLAlchemy, pika and httpx errors) — an ``IntegrityError``'s DETAIL
names key values, a ``KeyError`` or ``ValueError`` may quote anything — so for the rest only the
class and the frames are logged. A line is cut at ``MAX_MESSAGE_CHARS`` (Dramatiq's own lines name
a message by its arguments: the delivery, encrypted).
"""

from __future__ import annotations

import json
import logging
import random
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import httpx
import pika.exceptions
import sqlalchemy.exc
from pydantic import ValidationError

from queues.envelope import describe_validation_error
from queues.errors import FleetError
from workers.observability.context import current_message

LogFormat = Literal["json", "text"]

MAX_MESSAGE_CHARS = 4000
EVENTS_LOGGER = "fleet.events"
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d %(threadName)s] %(name)s: %(message)s"
_BASE_KEYS = ("time", "level", "logger", "message", "pid", "thread")
_TEXT_KEPT: tuple[type[BaseException], ...] = (
    FleetError,
    OSError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    pika.exceptions.AMQPError,
    httpx.TransportError,
)
WITHHELD = "(text withheld: it may carry payload values)"


class CurrentStderrHandler(logging.StreamHandler[TextIO]):
    """A stream handler on whatever ``sys.stderr`` is when a line is written."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


class JsonFormatter(logging.Formatter):
    """One JSON object per line; see the module docstring for the keys."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": _cut(record.getMessage()),
            "pid": record.process,
            "thread": record.threadName,
        }
        context = current_message()
        if context is not None:
            line.update(context.fields())
        event = getattr(record, "fleet_event", None)
        if isinstance(event, dict):
            line["message"] = str(event.get("event"))
            line.update({k: v for k, v in event.items() if k not in _BASE_KEYS})
        if getattr(record, "sampled", False):
            line["sampled"] = True
        if record.exc_info and record.exc_info[1] is not None:
            line["error_class"] = type(record.exc_info[1]).__name__
            line["traceback"] = _cut(safe_traceback(record.exc_info[1]))
        return json.dumps(line, default=str, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """Classic text lines, with ``[message_id type queue]`` while a message is in hand."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        context = current_message()
        suffix = (
            f" [{context.message_id} {context.message_type} {context.queue}]" if context else ""
        )
        saved = record.exc_info, record.exc_text
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = safe_traceback(record.exc_info[1])
            record.exc_info = None
        try:
            return _cut(super().format(record)) + suffix
        finally:
            record.exc_info, record.exc_text = saved


class SuccessSampler(logging.Filter):
    """Passes failures; passes a sampled share of DEBUG outcome events, raised to INFO."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            return True
        if self.rate > 0 and random.random() < self.rate:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.sampled = True
            return True
        return False


def safe_traceback(exc: BaseException) -> str:
    """A traceback whose exception texts carry no payload values (see the module docstring)."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = "".join(traceback.format_tb(current.__traceback__))
        parts.append(f"{frames}{type(current).__name__}: {_safe_text(current)}")
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return "\n-- caused by / during --\n".join(reversed(parts))


def _safe_text(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return describe_validation_error(exc)
    if isinstance(exc, _TEXT_KEPT):
        return str(exc)
    return WITHHELD


def _cut(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return text[:MAX_MESSAGE_CHARS] + f"… ({len(text) - MAX_MESSAGE_CHARS} more characters)"


def configure_logging(
    log_format: LogFormat = "json", level: str = "INFO", success_sample_rate: float = 0.0
) -> None:
    """Replace the root handlers with one that writes ``log_format`` lines to stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = CurrentStderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    events = logging.getLogger(EVENTS_LOGGER)
    for old in list(events.filters):
        if isinstance(old, SuccessSampler):
            events.removeFilter(old)
    if success_sample_rate > 0 and root.getEffectiveLevel() > logging.DEBUG:
        # The events logger must let DEBUG records through for the sampler to pick some.
        events.setLevel(logging.DEBUG)
        events.addFilter(SuccessSampler(success_sample_rate))
    else:
        events.setLevel(logging.NOTSET)
    logging.getLogger("pika").setLevel(logging.WARNING)
