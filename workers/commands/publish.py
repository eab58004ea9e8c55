"""``fleet publish``: validate, seal and publish payloads with streaming confirms."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from workers.commands.output import console, fail

if TYPE_CHECKING:
    from queues.contracts import Contract


def _documents(text: str) -> list[tuple[int, str]]:
    """(line number, JSON text) for one JSON object, a JSON array, or JSON lines."""
    stripped = text.strip()
    if not stripped:
        return []
    try:
        whole = json.loads(stripped)
    except ValueError:
        whole = None
    if isinstance(whole, dict):
        return [(1, stripped)]
    if isinstance(whole, list):
        return [(index + 1, json.dumps(item)) for index, item in enumerate(whole)]
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def validate_documents(model: type[Contract], text: str) -> list[Contract]:
    """Validate every document strictly, as a worker would.

    Raises:
        ValueError: one line naming the document and the field, never a value.
    """
    from pydantic import ValidationError

    from queues.envelope import describe_validation_error

    payloads = []
    for line, document in _documents(text):
        try:
            payloads.append(model.model_validate_json(document, strict=True))
        except ValidationError as exc:
            raise ValueError(
                f"line {line}: invalid payload: {describe_validation_error(exc)}"
            ) from None
    return payloads


def publish(
    message_type: str = typer.Argument(..., help="Message type = routing key"),
    source: str = typer.Option(
        ..., "--json", help="JSON file (one object, an array, or JSON lines); '-' for stdin"
    ),
    schema_version: int | None = typer.Option(
        None, "--schema-version", help="Schema version (default: newest)"
    ),
    producer: str | None = typer.Option(
        None, "--producer", help="Seal as this producer (default: $FLEET_PRODUCER)"
    ),
) -> None:
    """Publish one or many payloads of MESSAGE_TYPE to the fleet exchange, with confirms.

    Prints one JSON result per message on stdout; exits 1 when any was not confirmed,
    2 on bad input (nothing is published then).
    """
    from queues.contracts import CATALOGUE, MESSAGE_TYPES, latest_model
    from queues.errors import FleetError
    from queues.keys import KeyRegistryError
    from queues.publisher import Publisher, PublishStatus
    from workers.settings import get_settings

    if message_type not in MESSAGE_TYPES:
        fail(f"unknown message type {message_type!r}; known: {', '.join(MESSAGE_TYPES)}")
    if schema_version is None:
        model = latest_model(message_type)
    elif (message_type, schema_version) in CATALOGUE:
        model = CATALOGUE[(message_type, schema_version)]
    else:
        fail(f"{message_type} has no schema version {schema_version}")
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as exc:
        fail(f"cannot read {source}: {exc.strerror}")
    try:
        payloads = validate_documents(model, text)
    except ValueError as exc:
        fail(str(exc))
    if not payloads:
        fail("no payload in the input")

    settings = get_settings()
    try:
        keys = settings.key_registry()
    except KeyRegistryError as exc:
        fail(exc.message)
    seal_as = producer or settings.producer
    with Publisher(
        settings.amqp_url.get_secret_value(),
        keys,
        seal_as,
        window=settings.publish_window,
        confirm_timeout_s=settings.publish_timeout_s,
        max_body_bytes=settings.max_body_bytes,
        heartbeat_s=settings.amqp_heartbeat_s,
    ) as publisher:
        try:
            results = publisher.publish_batch(payloads)
        except FleetError as exc:
            fail(exc.message)
    if settings.keys_file is not None:
        keys.flush_usage(settings.keys_file)
    counts: dict[str, Any] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
        sys.stdout.write(
            json.dumps(
                {
                    "message_id": result.message_id,
                    "type": result.message_type,
                    "status": str(result.status),
                    "detail": result.detail,
                }
            )
            + "\n"
        )
    summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    console.print(f"{message_type}: {summary}")
    if counts.get(PublishStatus.CONFIRMED, 0) != len(results):
        raise typer.Exit(1)
