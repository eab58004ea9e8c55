"""The real RabbitMQ for tests: scratch vhosts through rabbitmqctl (root on these machines)."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import quote

AMQP_HOST = "127.0.0.1"
AMQP_PORT = 5672


def rabbitmqctl(*args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def amqp_url(
    vhost: str, user: str = "guest", password: str = "guest", port: int = AMQP_PORT
) -> str:
    return f"amqp://{user}:{password}@{AMQP_HOST}:{port}/{quote(vhost, safe='')}"


@contextlib.contextmanager
def scratch_vhost(prefix: str = "test") -> Iterator[str]:
    """A fresh vhost that guest may use fully; deleted afterwards with everything in it."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost, check=False)
