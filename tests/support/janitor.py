"""Clean-up that no test waits for: dropping a schema, deleting a vhost, killing a process group.

A test's teardown hands its clean-up here and returns at once; the work runs on two background
threads. ``finish()`` (called when the pytest session ends) waits for all of it and raises if
any of it failed, so nothing leaks silently.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pending: list[tuple[str, Future[Any]]] = []


def later(what: str, function: Callable[..., Any], *args: Any) -> None:
    """Run ``function(*args)`` in the background; ``what`` names it if it fails."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="janitor")
        _pending.append((what, _pool.submit(function, *args)))


def finish() -> None:
    """Wait for every clean-up handed over so far.

    Raises:
        RuntimeError: naming each clean-up that failed.
    """
    global _pool
    with _lock:
        pending, pool = list(_pending), _pool
        _pending.clear()
        _pool = None
    failures = []
    for what, future in pending:
        try:
            future.result(timeout=120)
        except Exception as exc:
            failures.append(f"{what}: {type(exc).__name__}: {exc}")
    if pool is not None:
        pool.shutdown(wait=True)
    if failures:
        raise RuntimeError("clean-up failed: " + "; ".join(failures))
