"""Subcommand groups of the ``fleet`` CLI, one module each.

At module level only cheap imports (typer, the standard library, queues.errors and
workers.commands.output): whatever else a command needs it imports in its body
(tests/unit/test_cli_imports.py).
"""
