"""``fleet db``: the store's schema (Alembic migrations in migrations/)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from workers.commands.output import console, fail

if TYPE_CHECKING:
    from alembic.config import Config

app = typer.Typer(help="The store's schema (Alembic).", no_args_is_help=True)


@app.callback()
def db() -> None:
    """The store's schema (Alembic migrations)."""


ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"


def alembic_config(schema: str | None = None) -> Config:
    """Alembic's configuration for the settings' database (and optionally one schema)."""
    from alembic.config import Config

    from workers.settings import get_settings

    if not ALEMBIC_INI.is_file():
        fail(f"alembic.ini not found at {ALEMBIC_INI}: run from a checkout of telco-fleet")
    settings = get_settings()
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = settings.database_url.get_secret_value()
    schema = schema or settings.db_schema
    if schema is not None:
        config.attributes["schema"] = schema
    return config


@app.command("upgrade")
def upgrade(
    revision: str = typer.Option("head", "--revision", "-r", help="Target revision"),
    schema: str | None = typer.Option(
        None,
        "--schema",
        help="Migrate into this schema, created if missing (default: $FLEET_DB_SCHEMA)",
        show_default=False,
    ),
) -> None:
    """Apply the migrations up to REVISION (default: head) to $FLEET_DATABASE_URL."""
    from alembic import command
    from sqlalchemy.exc import OperationalError

    try:
        command.upgrade(alembic_config(schema), revision)
    except OperationalError as exc:
        fail(f"database unreachable ({type(exc.orig).__name__})")
    console.print(f"database schema at {revision}", highlight=False)
