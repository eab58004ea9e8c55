"""``fleet keys``: the producer key registry — create, list, retire. Never prints key material."""

from __future__ import annotations

from pathlib import Path

import typer

from workers.commands.output import console, emit_json, fail

app = typer.Typer(
    help="Producer keys (kid ▶ producer ▶ types ▶ AES-256 key).", no_args_is_help=True
)

KeysFile = typer.Option(
    None, "--file", "-f", help="Key registry file (default: $FLEET_KEYS_FILE)", show_default=False
)


def _path(file: Path | None) -> Path:
    from workers.settings import get_settings

    path = file or get_settings().keys_file
    if path is None:
        fail("no key registry file: pass --file or set FLEET_KEYS_FILE")
    return path


@app.command("new")
def new(
    producer: str = typer.Option(
        ..., "--producer", "-p", help="Producer name, e.g. payment-gateway"
    ),
    types: list[str] = typer.Option(
        ...,
        "--types",
        "-t",
        help="Type pattern the producer may send (repeatable), e.g. 'billing.*'",
    ),
    file: Path | None = KeysFile,
    json_output: bool = typer.Option(False, "--json", help="Print the new key's id as JSON"),
) -> None:
    """Create a key for PRODUCER; it becomes the producer's sealing key (rotation)."""
    from queues.keys import KeyRegistry, KeyRegistryError, ProducerKey

    path = _path(file)
    try:
        registry = KeyRegistry.load(path) if path.exists() else KeyRegistry()
        key = ProducerKey.generate(producer, types)
        registry.add(key)
        registry.save(path)
    except KeyRegistryError as exc:
        fail(exc.message)
    if json_output:
        emit_json({"kid": key.kid, "producer": key.producer, "types": list(key.types)})
    else:
        console.print(f"created key [bold]{key.kid}[/] for {producer} in {path} (mode 0600)")


@app.command("list")
def list_keys(
    file: Path | None = KeysFile,
    json_output: bool = typer.Option(False, "--json", help="JSON on stdout"),
) -> None:
    """Key ids, producers, types, creation time and usage — never key material."""
    from rich.table import Table

    from queues.keys import ROTATE_AFTER_MESSAGES, KeyRegistry, KeyRegistryError, read_usage

    path = _path(file)
    try:
        registry = KeyRegistry.load(path)
        usage = read_usage(path)
    except KeyRegistryError as exc:
        fail(exc.message)
    rows = []
    for key in registry:
        sealing = registry.sealing_key(key.producer).kid == key.kid
        rows.append(
            {
                "kid": key.kid,
                "producer": key.producer,
                "types": list(key.types),
                "created_at": key.created_at.isoformat(),
                "sealing": sealing,
                "messages_sealed": usage.get(key.kid, 0),
                "rotate_due": usage.get(key.kid, 0) >= ROTATE_AFTER_MESSAGES,
            }
        )
    if json_output:
        emit_json(rows)
        return
    table = Table(title=f"keys in {path}")
    for column in ("kid", "producer", "types", "created", "seals", "messages sealed"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["kid"]),
            str(row["producer"]),
            ", ".join(row["types"]),  # type: ignore[arg-type]
            str(row["created_at"]),
            "yes" if row["sealing"] else "",
            f"{row['messages_sealed']:,}" + (" [red]rotate![/]" if row["rotate_due"] else ""),
        )
    console.print(table)


@app.command("retire")
def retire(
    kid: str = typer.Argument(..., help="Key id to remove"),
    file: Path | None = KeysFile,
    yes: bool = typer.Option(False, "--yes", help="Do not ask"),
) -> None:
    """Remove a key: envelopes sealed with it no longer open (re-encrypt archives first)."""
    from queues.keys import KeyRegistry, KeyRegistryError

    path = _path(file)
    try:
        registry = KeyRegistry.load(path)
        if registry.get(kid) is None:
            fail(f"no key with id {kid} in {path}")
        if not yes and not typer.confirm(f"retire {kid}? envelopes sealed with it stop opening"):
            raise typer.Exit(1)
        registry.remove(kid)
        registry.save(path)
    except KeyRegistryError as exc:
        fail(exc.message)
    console.print(f"retired {kid}")
