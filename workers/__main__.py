"""``python -m workers`` is the ``fleet`` command."""

from workers.cli import app

app(prog_name="fleet")
