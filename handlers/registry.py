"""Which handler runs for a message: one line per (queue, message type).

``crm.customer.upsert`` fans out to two queues, so it has two handlers; the inbox records each
handler's name, and each side deduplicates on its own. Handler names are persisted in the inbox:
renaming one restarts its deduplication window. A (queue, type) without a line here is refused
by ``bus.handle`` as ``NoHandler``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from handlers import billing, crm, invoicing, payments, provisioning
from handlers.context import Outcome

Handler = Callable[..., Outcome]
"""``handler(payload, ctx, **dependencies) -> Outcome``; dependencies are injected by name."""

HANDLERS: dict[tuple[str, str], Handler] = {
    ("crm", "crm.customer.upsert"): crm.upsert_customer,
    ("crm", "crm.interaction.log"): crm.log_interaction,
    ("billing", "crm.customer.upsert"): billing.mirror_account_holder,
    ("billing", "billing.account.open"): billing.open_account,
    ("billing", "billing.charge.post"): billing.post_charge,
    ("billing", "billing.invoice.issue"): invoicing.issue_invoice,
    ("billing", "billing.payment.record"): payments.record_payment,
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
