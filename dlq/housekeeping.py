"""Housekeeping: resolve (handled without replay), purge (retention), re-encrypt (key retirement).

Each writes one audit row in the same transaction as its change, so there is never a change
without its record, nor a record of a change that did not happen.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, func, select, text, update

from dlq import audit
from dlq.crypto import MissingKey, archive_key, kid_of, seal_for_archive
from dlq.models import DeadLetter
from dlq.queries import Filter
from queues.errors import AuthenticationFailed, NotJwe
from queues.keys import KeyRegistry


@dataclass
class ResolveReport:
    resolved: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"resolved": self.resolved, "skipped": {str(k): v for k, v in self.skipped.items()}}


def resolve(engine: Engine, ids: Sequence[int], note: str) -> ResolveReport:
    """Mark open or replayed dead letters handled (kept until retention); audited."""
    report = ResolveReport()
    wanted = list(dict.fromkeys(ids))
    with engine.begin() as connection:
        taken = [
            int(i)
            for i in connection.execute(
                select(DeadLetter.id)
                .where(DeadLetter.id.in_(wanted), DeadLetter.resolved_at.is_(None))
                .with_for_update(skip_locked=True)
            ).scalars()
        ]
        if taken:
            connection.execute(
                update(DeadLetter)
                .where(DeadLetter.id.in_(taken))
                .values(
                    resolved_at=text("now()"),
                    resolved_by=text("session_user"),
                    resolution_note=note,
                )
            )
        rows = connection.execute(
            select(DeadLetter.id, DeadLetter.resolved_by).where(
                DeadLetter.id.in_([i for i in wanted if i not in taken])
            )
        ).all()
        known = {int(r.id): r.resolved_by for r in rows}
        for letter_id in wanted:
            if letter_id in taken:
                continue
            if letter_id not in known:
                report.skipped[letter_id] = "no such dead letter"
            elif known[letter_id] is not None:
                report.skipped[letter_id] = f"already resolved by {known[letter_id]}"
            else:
                report.skipped[letter_id] = "locked by another operator right now"
        report.resolved = sorted(taken)
        audit.record(
            connection,
            "resolve",
            "ok" if not report.skipped else ("partial" if taken else "refused"),
            wanted,
            {"note": note, "resolved": report.resolved, "skipped": report.to_json()["skipped"]},
        )
    return report


@dataclass
class PurgeReport:
    matched: int
    unhandled: int
    deleted: int
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "unhandled": self.unhandled,
            "deleted": self.deleted,
            "dry_run": self.dry_run,
        }


def purge(
    engine: Engine, before: datetime, *, only_handled: bool = False, dry_run: bool = False
) -> PurgeReport:
    """Delete dead letters archived before ``before`` (retention); audited.

    ``only_handled`` keeps open ones (neither replayed nor resolved).
    """
    condition = DeadLetter.archived_at < before
    if only_handled:
        condition = condition & (
            DeadLetter.replayed_at.is_not(None) | DeadLetter.resolved_at.is_not(None)
        )
    unhandled_condition = (
        condition & DeadLetter.replayed_at.is_(None) & DeadLetter.resolved_at.is_(None)
    )
    with engine.begin() as connection:
        matched = int(connection.execute(select(func.count()).where(condition)).scalar_one())
        unhandled = int(
            connection.execute(select(func.count()).where(unhandled_condition)).scalar_one()
        )
        if dry_run:
            return PurgeReport(matched, unhandled, 0, True)
        deleted = [
            int(i)
            for i in connection.execute(
                delete(DeadLetter).where(condition).returning(DeadLetter.id)
            ).scalars()
        ]
        audit.record(
            connection,
            "purge",
            "ok",
            deleted,
            {
                "archived_before": before.isoformat(),
                "only_handled": only_handled,
                "deleted": len(deleted),
                "unhandled_deleted": unhandled,
            },
        )
    return PurgeReport(matched, unhandled, len(deleted), False)


@dataclass
class ReencryptReport:
    archive_kid: str
    reencrypted: list[int] = field(default_factory=list)
    from_kids: dict[str, int] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "archive_kid": self.archive_kid,
            "reencrypted": len(self.reencrypted),
            "from_kids": self.from_kids,
            "skipped": {str(k): v for k, v in self.skipped.items()},
            "dry_run": self.dry_run,
        }


def needed_kids(engine: Engine, flt: Filter, archive_kid: str) -> dict[str, int]:
    """Kids (and how many envelopes each) that ``reencrypt`` would need to open."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(DeadLetter.kid, func.count())
            .where(flt.where(), DeadLetter.kid.is_not(None), DeadLetter.kid != archive_kid)
            .group_by(DeadLetter.kid)
        ).all()
    return {str(kid): int(n) for kid, n in rows}


def reencrypt(
    engine: Engine, keys: KeyRegistry, flt: Filter, *, dry_run: bool = False
) -> ReencryptReport:
    """Re-seal matching archived envelopes under the newest archive key; audited.

    The original producer and kid are kept (``original_producer``, ``original_kid``) and the
    envelope's header keeps its steering fields. Envelopes that cannot be opened at all
    (tampered, not an envelope) are kept as received and reported.

    Raises:
        MissingKey: no archive key, or a kid an envelope needs is not in ``keys`` — nothing is
            changed then.
    """
    target = archive_key(keys)
    needed = needed_kids(engine, flt, target.kid)
    missing = sorted(kid for kid in needed if keys.get(kid) is None)
    if missing:
        listed = ", ".join(f"{kid} ({needed[kid]} envelopes)" for kid in missing)
        raise MissingKey(f"the key registry lacks {listed}; nothing was re-encrypted")
    report = ReencryptReport(archive_kid=target.kid, dry_run=dry_run)
    from_kids: Counter[str] = Counter()
    with engine.begin() as connection:
        rows = connection.execute(
            select(
                DeadLetter.id,
                DeadLetter.body,
                DeadLetter.kid,
                DeadLetter.producer,
                DeadLetter.original_kid,
                DeadLetter.original_producer,
            )
            .where(flt.where(), DeadLetter.kid.is_not(None), DeadLetter.kid != target.kid)
            .order_by(DeadLetter.id)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            body = bytes(row.body)
            try:
                sealed, old_kid = seal_for_archive(body, keys)
            except AuthenticationFailed:
                report.skipped[row.id] = "cannot be opened (tampered): kept as received"
                continue
            except NotJwe:
                report.skipped[row.id] = "not an envelope: kept as received"
                continue
            from_kids[old_kid] += 1
            report.reencrypted.append(int(row.id))
            if dry_run:
                continue
            connection.execute(
                update(DeadLetter)
                .where(DeadLetter.id == row.id)
                .values(
                    body=sealed,
                    kid=kid_of(sealed),
                    original_kid=row.original_kid or old_kid,
                    original_producer=row.original_producer or row.producer,
                    reencrypted_at=text("now()"),
                )
            )
        report.from_kids = dict(from_kids)
        if dry_run:
            connection.rollback()
            return report
        audit.record(
            connection,
            "reencrypt",
            "ok" if not report.skipped else "partial",
            [*report.reencrypted, *report.skipped],
            {
                "archive_kid": target.kid,
                "from_kids": report.from_kids,
                "skipped": {str(k): v for k, v in report.skipped.items()},
            },
        )
    return report


__all__ = [
    "PurgeReport",
    "ReencryptReport",
    "ResolveReport",
    "needed_kids",
    "purge",
    "reencrypt",
    "resolve",
]
