"""``fleet topology`` and ``fleet roles``: declare, check and export the broker's topology; users.

The work is in queues.topology and queues.roles; this module only reads settings and prints.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import typer

from workers.commands.output import console, emit_json, fail

if TYPE_CHECKING:
    from queues.topology import PolicyVia, TopologyConfig

app = typer.Typer(
    help="RabbitMQ topology: exchanges, quorum queues, bindings and their policies.",
    no_args_is_help=True,
)
roles_app = typer.Typer(
    help="RabbitMQ users: one per upstream producer and per fleet duty, least privilege.",
    no_args_is_help=True,
)

UrlOption = typer.Option(
    None, "--url", help="AMQP URL, vhost included (default: $FLEET_AMQP_URL)", show_default=False
)
ManagementUrlOption = typer.Option(
    None,
    "--management-url",
    help="Management API base URL (default: http://<amqp host>:15672)",
    show_default=False,
)
ViaOption = typer.Option(
    "auto", "--via", help="How to set policies and list: auto, http (management API), rabbitmqctl"
)
NodeOption = typer.Option(
    None,
    "--node",
    help="rabbitmqctl's node name (default: the machine's default node), e.g. rabbit@broker-1",
    show_default=False,
)
JsonOption = typer.Option(False, "--json", help="JSON on stdout")


def _url(url: str | None) -> str:
    from workers.settings import get_settings

    return url or get_settings().amqp_url.get_secret_value()


def _via(via: str) -> PolicyVia:
    if via not in ("auto", "http", "rabbitmqctl"):
        fail(f"--via {via!r} is not one of auto, http, rabbitmqctl")
    return cast("PolicyVia", via)


Report = TypeVar("Report")


def _against_broker(
    action: Callable[..., Report],
    url: str | None,
    management_url: str | None,
    via: str,
    node: str | None,
) -> Report:
    """``apply`` or ``check`` on the broker the options name; a one-line error otherwise."""
    from queues.topology import Rabbitmqctl, TopologyError

    try:
        return action(
            _url(url),
            _config(),
            via=_via(via),
            management_url=management_url,
            ctl=Rabbitmqctl(node) if node else None,
        )
    except TopologyError as exc:
        fail(exc.message)


def _config() -> TopologyConfig:
    from queues.topology import TopologyConfig, TopologyError
    from workers.settings import get_settings

    try:
        return TopologyConfig.from_settings(get_settings())
    except TopologyError as exc:
        fail(f"{exc.message}: fix FLEET_RETRY_TIERS_S / FLEET_*DELIVERY_LIMIT")


@app.command("apply")
def apply_command(
    url: str | None = UrlOption,
    management_url: str | None = ManagementUrlOption,
    via: str = ViaOption,
    node: str | None = NodeOption,
    json_output: bool = JsonOption,
) -> None:
    """Declare exchanges, queues and bindings; set policies. Idempotent; never deletes."""
    from rich.table import Table

    from queues.topology import apply

    report = _against_broker(apply, url, management_url, via, node)
    if json_output:
        emit_json(report.to_json())
        return
    if not report.changed:
        console.print(
            f"vhost {report.vhost}: nothing changed ({len(report.changes)} entities up to date)"
        )
        return
    table = Table(title=f"vhost {report.vhost}: {len(report.changed)} changed")
    for column in ("kind", "name", "action", "detail"):
        table.add_column(column)
    for change in report.changed:
        table.add_row(change.kind, change.name, change.action, change.detail)
    console.print(table)
    console.print(f"policies set via {report.via}")


@app.command("check")
def check_command(
    url: str | None = UrlOption,
    management_url: str | None = ManagementUrlOption,
    via: str = ViaOption,
    node: str | None = NodeOption,
    json_output: bool = JsonOption,
) -> None:
    """Compare the broker with the topology; exit 1 when anything differs, saying what to do."""
    from rich.table import Table

    from queues.topology import check

    report = _against_broker(check, url, management_url, via, node)
    if json_output:
        emit_json(report.to_json())
    elif report.ok:
        console.print(f"vhost {report.vhost}: topology matches")
    else:
        table = Table(title=f"vhost {report.vhost}: {len(report.findings)} differences")
        for column in ("kind", "name", "problem", "detail", "what to do"):
            table.add_column(column, overflow="fold")
        for finding in report.findings:
            table.add_row(finding.kind, finding.name, finding.problem, finding.detail, finding.todo)
        console.print(table)
    if not report.ok:
        raise typer.Exit(1)


@app.command("export")
def export_command(
    directory: Path = typer.Argument(..., help="Where to write definitions.json and roles.json"),
) -> None:
    """Write the topology as RabbitMQ definitions JSON (default settings) and the roles."""
    from queues.roles import render_roles
    from queues.topology import TopologyConfig, render_definitions

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "definitions.json").write_text(render_definitions(TopologyConfig()))
    (directory / "roles.json").write_text(render_roles())
    console.print(f"wrote definitions.json and roles.json to {directory}")


@roles_app.command("apply")
def roles_apply_command(
    vhost: str = typer.Option(..., "--vhost", help="Virtual host the permissions apply to"),
    prefix: str = typer.Option("", "--prefix", help="Prefix of every user name (users are global)"),
    json_output: bool = JsonOption,
) -> None:
    """Create or update the fleet's users on the broker node (rabbitmqctl, as root).

    Passwords come from FLEET_ROLE_PASSWORD_<USER> (e.g. FLEET_ROLE_PASSWORD_FLEET_ADMIN); a new
    user without one gets a generated password, printed once on stdout.
    """
    from rich.table import Table

    from queues.roles import RolesError, apply_roles, fleet_roles, password_env_var
    from queues.topology import TopologyError

    # Not settings: the variable names follow the user names, which depend on --prefix.
    passwords = {
        prefix + role.user: os.environ[var]
        for role in fleet_roles()
        if (var := password_env_var(prefix + role.user)) in os.environ
    }
    try:
        report = apply_roles(vhost, prefix=prefix, passwords=passwords)
    except (RolesError, TopologyError) as exc:
        fail(exc.message)
    if json_output:
        emit_json(
            {
                "vhost": report.vhost,
                "changed": len(report.changed),
                "changes": [c.to_json() for c in report.changes],
                "generated_passwords": dict(report.generated_passwords),
            }
        )
        return
    if report.changed:
        table = Table(title=f"vhost {vhost}: {len(report.changed)} changed")
        for column in ("user", "item", "action", "detail"):
            table.add_column(column)
        for change in report.changed:
            table.add_row(change.user, change.item, change.action, change.detail)
        console.print(table)
    else:
        console.print(f"vhost {vhost}: nothing changed ({len(report.users())} users up to date)")
    if report.generated_passwords:
        console.print(
            "[bold yellow]generated passwords below (stdout), shown once:[/] "
            "store them in your secret store now"
        )
        for user, password in sorted(report.generated_passwords.items()):
            typer.echo(f"{password_env_var(user)}={password}")
