"""``fleet worker`` and ``fleet outbox relay``: the fleet's long-running processes."""

from __future__ import annotations

import importlib
import json
import os
from typing import Literal

import typer

from workers.commands.output import fail

SUSPECT_LANE = "workers.app:run_suspect_lane"
OUTBOX_RELAY = "workers.relay:run_outbox_relay"
ARCHIVER = "workers.processes:run_archiver"
METRICS_SERVER = "workers.observability.metrics:serve_metrics"
LOG_FORMATS = ("json", "text")
# What every process of the fleet imports, minus ``workers.app`` itself (which builds the broker
# and its middleware: that stays in each worker process). Imported once before the supervisor
# forks, they are inherited copy-on-write instead of imported again in each process (about a
# second of CPU apiece).
# None of them connects, starts a thread or writes a file when imported.
PRELOADED = (
    "workers.broker",
    "workers.middleware",
    "workers.observability.context",
    "workers.observability.health",
    "workers.observability.metrics",
    "workers.observability.sentry",
    "workers.processes",
    "workers.relay",
    "workers.runtime",
    "dramatiq.cli",
)


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
    archiver: bool = typer.Option(
        False, "--archiver/--no-archiver", help="Run a dead-letter archiver process too"
    ),
    metrics_port: int = typer.Option(
        None,
        "--metrics-port",
        min=0,
        max=65535,
        help="Serve /metrics of all processes on this port, 0 = not at all "
        "(default: $FLEET_METRICS_PORT, 9191)",
    ),
    log_format: str = typer.Option(
        None,
        "--log-format",
        help="Log lines: json or text (default: $FLEET_LOG_FORMAT, json)",
    ),
) -> None:
    """Run worker processes on the chosen domain queues, each restarted when it dies.

    Every worker process runs under a Dramatiq master of its own, the side processes (suspect
    lane, relay, archiver, metrics) beside them; ``workers.supervisor`` restarts a child that
    dies and gives up loudly (exit 1) on a crash loop.
    """
    from queues.topology import DOMAINS
    from workers.observability.health import expect_worker_processes, forget_stopped_processes
    from workers.observability.logging import configure_logging
    from workers.observability.metrics import prepare_multiprocess_dir, remove_multiprocess_dir
    from workers.settings import get_settings
    from workers.supervisor import STOP_MARGIN_S, RestartPolicy, side_spec, supervise, worker_spec

    unknown = sorted(set(queues) - set(DOMAINS))
    if unknown:
        fail(f"unknown queue(s) {', '.join(unknown)}; the domains are {', '.join(DOMAINS)}")
    if log_format is not None and log_format not in LOG_FORMATS:
        fail(f"--log-format must be one of {', '.join(LOG_FORMATS)}")
    domains = queues or list(DOMAINS)
    # Every process forked from here inherits this environment (and the settings cache).
    os.environ["FLEET_WORKER_DOMAINS"] = json.dumps(domains)
    if threads is not None:
        os.environ["FLEET_WORKER_THREADS"] = str(threads)
    if metrics_port is not None:
        os.environ["FLEET_METRICS_PORT"] = str(metrics_port)
    if log_format is not None:
        os.environ["FLEET_LOG_FORMAT"] = log_format
    get_settings.cache_clear()
    settings = get_settings()
    configure_logging(
        _log_format(settings.log_format), settings.log_level, settings.log_success_sample_rate
    )
    metrics_dir, made_metrics_dir = prepare_multiprocess_dir(settings.metrics_dir)
    forget_stopped_processes(settings.health_dir)
    expectation = expect_worker_processes(
        settings.health_dir, processes + (1 if suspect_lane else 0)
    )
    argv = [
        "workers.app",
        "--threads",
        str(settings.worker_threads),
        "--worker-shutdown-timeout",
        str(int(settings.shutdown_timeout_s * 1000)),
        "--skip-logging",
        "--queues",
        *domains,
    ]
    specs = [worker_spec(index, argv) for index in range(processes)]
    if suspect_lane:
        specs.append(side_spec("suspect-lane", SUSPECT_LANE))
    if outbox_relay:
        specs.append(side_spec("outbox-relay", OUTBOX_RELAY))
    if archiver:
        specs.append(side_spec("archiver", ARCHIVER))
    if settings.metrics_port:
        specs.append(side_spec("metrics", METRICS_SERVER))
    for module in PRELOADED:
        importlib.import_module(module)
    try:
        code = supervise(
            specs,
            RestartPolicy(settings.worker_restart_limit, settings.worker_restart_window_s),
            stop_timeout_s=settings.shutdown_timeout_s + STOP_MARGIN_S,
            forget=lambda: forget_stopped_processes(settings.health_dir),
        )
    finally:
        expectation.unlink(missing_ok=True)
        if made_metrics_dir:
            remove_multiprocess_dir(metrics_dir)
    raise typer.Exit(code)


def _log_format(value: str) -> Literal["json", "text"]:
    return "text" if value == "text" else "json"


outbox_app = typer.Typer(help="The transactional outbox.", no_args_is_help=True)


@outbox_app.command("relay")
def relay(
    metrics_port: int = typer.Option(
        None,
        "--metrics-port",
        min=0,
        max=65535,
        help="Serve /metrics on this port, 0 = not at all (default: $FLEET_METRICS_PORT, 9191)",
    ),
) -> None:
    """Publish committed follow-up messages until stopped (safe as several replicas)."""
    from workers.observability.logging import configure_logging
    from workers.observability.metrics import start_metrics_server
    from workers.relay import run_outbox_relay
    from workers.settings import get_settings

    settings = get_settings()
    configure_logging(
        _log_format(settings.log_format), settings.log_level, settings.log_success_sample_rate
    )
    port = settings.metrics_port if metrics_port is None else metrics_port
    if port:
        start_metrics_server(port, settings.metrics_bind)
    raise typer.Exit(run_outbox_relay())
