"""``fleet schema``: the JSON Schemas of the catalogue, committed under docs/schemas/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from workers.commands.output import console

app = typer.Typer(help="JSON Schemas of the message catalogue.", no_args_is_help=True)


def schema_documents() -> dict[str, dict[str, Any]]:
    """File name ▶ JSON Schema, for every (type, version) and the envelope header."""
    from queues.contracts import CATALOGUE
    from queues.envelope import EnvelopeHeader

    documents: dict[str, dict[str, Any]] = {}
    for (message_type, version), model in sorted(CATALOGUE.items()):
        schema = model.model_json_schema(mode="validation")
        schema["$id"] = f"urn:telco-fleet:schema:{message_type}:v{version}"
        schema["x-message-type"] = message_type
        schema["x-schema-version"] = version
        documents[f"{message_type}.v{version}.schema.json"] = schema
    header = EnvelopeHeader.model_json_schema(mode="validation")
    header["$id"] = "urn:telco-fleet:schema:envelope-header"
    documents["envelope-header.schema.json"] = header
    return documents


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


@app.command("export")
def export(directory: Path = typer.Argument(..., help="Where to write *.schema.json")) -> None:
    """Write one JSON Schema per (type, schema version), plus the envelope header's."""
    directory.mkdir(parents=True, exist_ok=True)
    documents = schema_documents()
    for stale in directory.glob("*.schema.json"):
        if stale.name not in documents:
            stale.unlink()
    for name, document in documents.items():
        (directory / name).write_text(render(document))
    console.print(f"wrote {len(documents)} schemas to {directory}")
