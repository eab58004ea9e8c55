"""``fleet health``: the worker's own verdict on itself, for Kubernetes exec probes."""

from __future__ import annotations

from pathlib import Path

import typer

EXIT_UNHEALTHY = 1


def health(
    max_stale_s: float = typer.Option(
        None,
        "--max-stale-s",
        min=0.1,
        help="Oldest acceptable state file / DB round trip (default: $FLEET_HEALTH_MAX_STALE_S)",
    ),
    max_busy_s: float = typer.Option(
        None,
        "--max-busy-s",
        min=0.1,
        help="A thread busy longer on one message is stuck (default: $FLEET_HEALTH_MAX_BUSY_S)",
    ),
    liveness: bool = typer.Option(
        False,
        "--liveness",
        help="Only what a restart cures: state written, no stuck thread (no consumer/DB checks)",
    ),
    health_dir: Path = typer.Option(
        None, "--dir", help="Health state directory (default: $FLEET_HEALTH_DIR)"
    ),
) -> None:
    """Exit 0 when this pod's worker processes are healthy, else 1; one line says why.

    Reads only the state files the workers write: no broker or database call.
    """
    from workers.observability.health import check_health
    from workers.settings import get_settings

    settings = get_settings()
    verdict = check_health(
        health_dir or settings.health_dir,
        max_stale_s=max_stale_s or settings.health_max_stale_s,
        max_busy_s=max_busy_s or settings.health_max_busy_s,
        liveness=liveness,
    )
    typer.echo(verdict.reason)
    raise typer.Exit(0 if verdict.ok else EXIT_UNHEALTHY)
