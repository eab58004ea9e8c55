"""Waiting for a condition in tests: poll with a growing interval, fail naming what was awaited.

The interval starts small (a condition that holds soon is seen soon) and grows ×1.5 up to a cap,
so a long wait costs few checks. A check that starts a process (``rabbitmqctl`` boots an Erlang
VM: ~0.5–0.8 s of CPU) polls from ``CTL_FIRST_S``, never faster than twice a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

FIRST_S = 0.1
CAP_S = 1.0
GROWTH = 1.5
CTL_FIRST_S = 0.5  # for checks that run rabbitmqctl


def poll(
    condition: Callable[[], T | None],
    timeout_s: float,
    what: str,
    first_s: float = FIRST_S,
    cap_s: float = CAP_S,
) -> T:
    """The first truthy value of ``condition()``, checked now and then at growing intervals.

    Raises:
        AssertionError: ``condition()`` stayed falsy for ``timeout_s``; the message names ``what``.
    """
    deadline = time.monotonic() + timeout_s
    interval = first_s
    checks = 0
    while True:
        checks += 1
        if value := condition():
            return value
        if (left := deadline - time.monotonic()) <= 0:
            raise AssertionError(f"timed out waiting for {what} ({timeout_s} s, {checks} checks)")
        time.sleep(min(interval, left))
        interval = min(interval * GROWTH, cap_s)
