"""``fleet worker`` and ``fleet outbox relay``: the fleet's long-running processes."""

from __future__ import annotations

import json
import os

import typer

from queues.topology import DOMAINS
from workers.commands.output import fail
from workers.settings import get_settings

SUSPECT_LANE = "workers.app:run_suspect_lane"
OUTBOX_RELAY = "workers.relay:run_outbox_relay"


def worker(
    queues: list[str] = typer.Option(
        [], "--queue", "-q", help="Domain queue to serve (repeatable; default: all)"
    ),
    processes: int = typer.Option(2, "--processes", "-p", min=1, help="Worker processes"),
    threads: int = typer.Option(
        None, "--threads", "-t", min=1, help="Threads per process (default: $FLEET_WORKER_THREADS)"
    ),
    suspect_lane: bool = typer.Option(
        True, "--suspect-lane/--no-suspect-lane", help="Run the one-at-a-time suspect lane"
    ),
    outbox_relay: bool = typer.Option(
        False, "--outbox-relay/--no-outbox-relay", help="Run an outbox relay process too"
    ),
) -> None:
    """Run worker processes on the chosen domain queues (Dramatiq's CLI does the processes)."""
    import dramatiq.cli

    unknown = sorted(set(queues) - set(DOMAINS))
    if unknown:
        fail(f"unknown queue(s) {', '.join(unknown)}; the domains are {', '.join(DOMAINS)}")
    domains = queues or list(DOMAINS)
    settings = get_settings()
    os.environ["FLEET_WORKER_DOMAINS"] = json.dumps(domains)
    if threads is not None:
        os.environ["FLEET_WORKER_THREADS"] = str(threads)
    get_settings.cache_clear()
    threads = get_settings().worker_threads
    argv = [
        "workers.app",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--worker-shutdown-timeout",
        str(int(settings.shutdown_timeout_s * 1000)),
        "--queues",
        *domains,
    ]
    if suspect_lane:
        argv += ["--fork-function", SUSPECT_LANE]
    if outbox_relay:
        argv += ["--fork-function", OUTBOX_RELAY]
    parser = dramatiq.cli.make_argument_parser()
    raise typer.Exit(dramatiq.cli.main(parser.parse_args(argv)))


outbox_app = typer.Typer(help="The transactional outbox.", no_args_is_help=True)


@outbox_app.command("relay")
def relay() -> None:
    """Publish committed follow-up messages until stopped (safe as several replicas)."""
    from workers.relay import run_outbox_relay

    raise typer.Exit(run_outbox_relay())
