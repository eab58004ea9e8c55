"""What code under test sleeps: assert on backoffs by what was asked for, not by the clock."""

from __future__ import annotations

import threading
import time

import pytest


def record_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seconds of every ``time.sleep()`` the calling thread takes from now, in order.

    The sleeps still happen; other threads' sleeps (a server in the same process) are not recorded.
    """
    real_sleep = time.sleep
    caller = threading.get_ident()
    taken: list[float] = []

    def sleep(seconds: float) -> None:
        if threading.get_ident() == caller:
            taken.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    return taken
