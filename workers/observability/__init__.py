"""Observability of the fleet, one module per concern (DESIGN §8), each with its middleware.

- ``context``  the message a worker thread is handling (id, type, queue, kid), for logs and metrics
- ``metrics``  Prometheus metrics fed by the outcome events, multiprocess-safe, and their server
- ``logging``  JSON (or text) log lines carrying the message context, never payload values
- ``sentry``   final failures (dead-lettered) only, scrubbed, without the Dramatiq integration
- ``health``   per-process state files and the ``fleet health`` check that reads them

docs/observability.md is the operator's reference for all of it.
"""
