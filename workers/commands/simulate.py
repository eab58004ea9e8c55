"""``fleet simulate``: stand-ins for the systems around the fleet (tests, demos, docker-compose)."""

from __future__ import annotations

import signal
from types import FrameType

import typer

from workers.commands.output import console

app = typer.Typer(help="Simulators of the systems around the fleet.", no_args_is_help=True)


@app.callback()
def simulate() -> None:
    """Simulators of the systems around the fleet."""


@app.command("network")
def network(
    port: int = typer.Option(8089, "--port", "-p", min=0, max=65535, help="TCP port (0: any)"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on"),
    latency_ms: float = typer.Option(0.0, "--latency-ms", min=0, help="Delay before each answer"),
    failure_rate: float = typer.Option(
        0.0, "--failure-rate", min=0.0, max=1.0, help="Share of calls answered 503, unapplied"
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the failure dice"),
) -> None:
    """Serve a network element simulator until interrupted (SIGINT / SIGTERM)."""
    from handlers.network_sim import NetworkSimulatorServer, SimulatedNetwork

    state = SimulatedNetwork(latency_ms=latency_ms, failure_rate=failure_rate, seed=seed)
    server = NetworkSimulatorServer(host, port, state)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    console.print(
        f"network element simulator on {server.url} "
        f"(latency {latency_ms:g} ms, failure rate {failure_rate:g}, seed {seed})",
        highlight=False,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        console.print(f"stopped; stats {state.snapshot()}", highlight=False)
