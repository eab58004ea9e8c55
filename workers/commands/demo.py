"""``fleet demo``: the fleet at work on a realistic workload, checked against the database.

The work is in workers.demo (orchestration, summary) and workers.workload (the jobs); this module
reads options, checks the services, prints and chooses the exit code.
"""

from __future__ import annotations

import signal
import socket
from types import FrameType
from typing import TYPE_CHECKING

import typer

from workers.commands.output import console, emit_json, fail

if TYPE_CHECKING:
    from workers.demo import DemoReport
    from workers.settings import Settings

EXIT_MISMATCH = 1
EXIT_INTERRUPTED = 130


def demo(
    messages: int = typer.Option(
        3000, "--messages", "-n", min=20, help="Distinct messages in the workload (about)"
    ),
    processes: int = typer.Option(2, "--processes", "-p", min=1, help="Worker processes"),
    threads: int = typer.Option(4, "--threads", "-t", min=1, max=64, help="Threads per process"),
    keep: bool = typer.Option(
        False, "--keep", help="Keep the vhost, schema and files afterwards (prints how to look)"
    ),
    json_output: bool = typer.Option(False, "--json", help="The summary as JSON on stdout"),
    timeout_s: float = typer.Option(
        300.0, "--timeout-s", min=1.0, help="Give up when not every delivery settled by then"
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of the workload (same seed, same jobs)"
    ),
) -> None:
    """Run the fleet on a realistic workload in a sandbox of its own, then prove the outcome.

    Exit 0 only when the outcome events, PostgreSQL and the dead-letter queues all agree.
    """
    from sqlalchemy.exc import OperationalError

    from queues.topology import TopologyError
    from workers.demo import DemoError, DemoOptions, DemoRun  # the fleet's whole runtime: lazily
    from workers.settings import get_settings

    settings = get_settings()
    _preflight(settings)
    options = DemoOptions(
        messages=messages,
        processes=processes,
        threads=threads,
        keep=keep,
        timeout_s=timeout_s,
        seed=seed,
    )
    run = DemoRun(options, settings, console)
    report: DemoReport | None = None
    error: str | None = None
    code = 0
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run.run()
    except KeyboardInterrupt:
        error, code = "interrupted; stopped the fleet and cleaned up", EXIT_INTERRUPTED
    except DemoError as exc:
        error, code = str(exc), EXIT_MISMATCH
    except TopologyError as exc:
        error, code = exc.message, 2
    except OperationalError as exc:
        error, code = f"database unreachable ({type(exc.orig).__name__})", 2
    except Exception:
        code = EXIT_MISMATCH  # a bug: keep the logs for a look, show the traceback
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        # After a failure the logs and events stay for a look (vhost and schema go regardless).
        failed = code == EXIT_MISMATCH or (report is not None and not report.ok)
        with console.status("stopping and cleaning up"):
            problems = run.close(keep_files=failed)
    if report is not None:
        console.print(report.render())
        if report.ok:
            console.print("[bold green]ledger: OK[/]")
        else:
            names = "; ".join(c.name for c in report.checks if not c.ok)
            console.print(f"[bold red]ledger: MISMATCH[/] — {names}", highlight=False)
            code = EXIT_MISMATCH
        if json_output:
            emit_json(report.to_json())
    for problem in problems:
        console.print(f"[yellow]warning:[/] {problem}", highlight=False)
    if keep:
        for line in run.how_to_inspect():
            console.print(f"[dim]▸[/] {line}", highlight=False, soft_wrap=True)
    elif failed:
        console.print(f"[dim]▸[/] logs and events kept in {run.sandbox.workdir}", highlight=False)
    if error is not None:
        fail(error, code)
    raise typer.Exit(code)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _preflight(settings: Settings) -> None:
    """One line saying which service does not answer, and how to start it."""
    import pika
    from sqlalchemy.engine import make_url

    amqp = pika.URLParameters(settings.amqp_url.get_secret_value())
    database = make_url(settings.database_url.get_secret_value())
    services = (
        ("RabbitMQ", str(amqp.host), int(amqp.port), "rabbitmq-server -detached"),
        (
            "PostgreSQL",
            database.host or "127.0.0.1",
            database.port or 5432,
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        ),
    )
    for name, host, port, start in services:
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError:
            fail(
                f"{name} is not answering on {host}:{port}; "
                f"start it with `{start}` or `make services`"
            )
