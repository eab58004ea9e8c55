"""Which handler runs for a message: one line per (queue, message type).

``crm.customer.upsert`` fans out to two queues, so it has two handlers; the inbox records each
handler's name, and each side deduplicates on its own. Handler names are persisted in the inbox:
renaming one restarts its deduplication window.

Not here yet: ``billing.invoice.issue`` and ``billing.payment.record`` (a later issue).
``bus.handle`` raises ``NoHandler`` for them; the worker decides what to do before it gets that far
(``handler_for`` tells it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from handlers import billing, crm, provisioning
from handlers.context import Outcome

Handler = Callable[..., Outcome]
"""``handler(payload, ctx, **dependencies) -> Outcome``; dependencies are injected by name."""

HANDLERS: dict[tuple[str, str], Handler] = {
    ("crm", "crm.customer.upsert"): crm.upsert_customer,
    ("crm", "crm.interaction.log"): crm.log_interaction,
    ("billing", "crm.customer.upsert"): billing.mirror_account_holder,
    ("billing", "billing.account.open"): billing.open_account,
    ("billing", "billing.charge.post"): billing.post_charge,
    ("provisioning", "provisioning.service.activate"): provisioning.activate_service,
    ("provisioning", "provisioning.service.suspend"): provisioning.suspend_service,
    ("provisioning", "provisioning.service.resume"): provisioning.resume_service,
    ("provisioning", "provisioning.service.terminate"): provisioning.terminate_service,
}


def handler_for(queue: str, message_type: str) -> Handler | None:
    """The handler of (queue, type), or None when there is none (yet)."""
    return HANDLERS.get((queue, message_type))


def handler_name(handler: Any) -> str:
    """The name the inbox records for a handler."""
    return str(handler.__name__)
