"""The base of every message contract: frozen, strict, no extra fields, named by its routing key."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Contract(BaseModel):
    """One message type at one schema version. The routing key is ``message_type``.

    Python callers may construct models leniently (``"call_center"`` for an enum); what arrives on
    the wire is validated strictly (``open_envelope``): JSON integers stay integers, no coercion.
    ``entity_version_field`` names the payload field copied into the envelope header as
    ``entity_version`` (upserts only); ``None`` when the type has no entity version.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_type: ClassVar[str]
    schema_version: ClassVar[int]
    entity_version_field: ClassVar[str | None] = None

    def header_entity_version(self) -> int | None:
        """The entity version this message carries, if its type has one."""
        if self.entity_version_field is None:
            return None
        value = getattr(self, self.entity_version_field)
        assert isinstance(value, int)
        return value
