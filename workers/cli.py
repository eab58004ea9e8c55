"""The ``fleet`` command. Each group lives in workers/commands/<group>.py and is registered here.

Declaring the commands loads no heavy library: each command imports SQLAlchemy, pika, Dramatiq,
Alembic, cryptography… in its body, so ``fleet --help`` starts at once and ``fleet dlq ls`` loads
only the settings and the database driver (tests/unit/test_cli_imports.py holds this).
"""

from __future__ import annotations

import typer

from workers.commands import (
    billing,
    db,
    demo,
    dlq,
    health,
    keys,
    publish,
    schema,
    simulate,
    worker,
)
from workers.commands import topology as topology_commands

app = typer.Typer(
    name="fleet",
    help="telco-fleet: the asynchronous worker fleet between billing, provisioning and CRM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(schema.app, name="schema")
app.add_typer(keys.app, name="keys")
app.add_typer(topology_commands.app, name="topology")
app.add_typer(topology_commands.roles_app, name="roles")
app.command("publish")(publish.publish)
app.command("worker")(worker.worker)
app.command("demo")(demo.demo)
app.command("health")(health.health)
app.add_typer(worker.outbox_app, name="outbox")
app.add_typer(simulate.app, name="simulate")
app.add_typer(db.app, name="db")
app.add_typer(billing.billing_app, name="billing")
app.command("billrun")(billing.billrun)
app.add_typer(dlq.app, name="dlq")
app.add_typer(dlq.retry_app, name="retry")
