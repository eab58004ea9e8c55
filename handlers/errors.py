"""The business handlers' own errors, each in one family of queues.errors.

    PermanentError
    ├── CurrencyMismatch        currency_mismatch   charge or payment currency ≠ the account's
    ├── AccountConflict         account_conflict    account id reused with other data
    ├── PaymentConflict         payment_conflict    gateway reference reused with other data
    ├── AccountClosed           account_closed      charge to a closed account
    ├── ServiceConflict         service_conflict    service id reused with other data
    ├── NetworkRejected         network_rejected    the network element refused the request (4xx)
    ├── NoHandler               no_handler          no handler for this (queue, type) yet
    └── StoreRejected           store_rejected      PostgreSQL refused the data (SQLSTATE class
                                                    22 or 23): a bug or a gap in validation
    TransientError
    ├── DatabaseUnavailable     database_unavailable  connection refused, lost, pool exhausted,
    │                                               or deadlock/serialization retries exhausted
    ├── StoreFailure            store_failure       any other database error (e.g. a table
    │                                               missing while migrations lag behind)
    ├── NetworkUnavailable      network_unavailable timeouts / 5xx / 409 / 429 after bounded
    │                                               retries
    └── ConcurrentUpdate        concurrent_update   the state changed under a handler between its
                                                    read and its write (retried in process first)
    NotYet                      (queues.errors)     account not open yet, service not active yet
    IllegalTransition           (queues.errors)     anything after terminate

Messages name fields and states, never payload values.
"""

from __future__ import annotations

from queues.errors import PermanentError, TransientError


class CurrencyMismatch(PermanentError):
    """The charge's or payment's currency differs from its account's currency."""

    reason = "currency_mismatch"


class AccountConflict(PermanentError):
    """An account with this id is already open with different data."""

    reason = "account_conflict"


class PaymentConflict(PermanentError):
    """A payment with this gateway reference was recorded with another account or amount."""

    reason = "payment_conflict"


class AccountClosed(PermanentError):
    """The account is closed and takes no more charges."""

    reason = "account_closed"


class ServiceConflict(PermanentError):
    """A service with this id is already provisioned with different data."""

    reason = "service_conflict"


class NetworkRejected(PermanentError):
    """The network element refused the request (a 4xx other than 409 and 429)."""

    reason = "network_rejected"


class NoHandler(PermanentError):
    """No handler is registered for this (queue, message type)."""

    reason = "no_handler"


class StoreRejected(PermanentError):
    """PostgreSQL refused the data itself (data exception or constraint violation)."""

    reason = "store_rejected"


class StoreFailure(TransientError):
    """Another database error, e.g. a missing table while migrations lag behind the code."""

    reason = "store_failure"


class DatabaseUnavailable(TransientError):
    """PostgreSQL is unreachable, or a transaction kept deadlocking / failing to serialize."""

    reason = "database_unavailable"


class NetworkUnavailable(TransientError):
    """The network element timed out or answered 5xx / 409 / 429 on every bounded attempt."""

    reason = "network_unavailable"


class ConcurrentUpdate(TransientError):
    """The row changed between the handler's read and its write; run the handler again."""

    reason = "concurrent_update"
