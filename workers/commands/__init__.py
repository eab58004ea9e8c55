"""Subcommand groups of the ``fleet`` CLI, one module each."""
