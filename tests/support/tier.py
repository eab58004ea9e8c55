"""Which tier the running test is in: ``make test-fast`` leaves out the tests marked ``slow``.

Whatever boots a fleet of processes or a private broker node asks ``require_slow`` first, so a
scenario cannot land in the fast tier by a forgotten mark. Outside pytest (``bench/``) nothing
is refused.
"""

from __future__ import annotations

running_slow = True  # set per test by tests/conftest.py


def require_slow(what: str) -> None:
    """Raises AssertionError (naming the fix) when the running test is not marked ``slow``."""
    if not running_slow:
        raise AssertionError(
            f"{what} makes a test slow: mark it @pytest.mark.slow (make test-fast leaves those out)"
        )
