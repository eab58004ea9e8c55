"""The management HTTP API as an admin backend: listings and policies over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Sequence
from typing import Any

from queues.topology.entities import Binding, Policy, TopologyError
from queues.topology.export import policy_json
from queues.topology.state import BrokerState, exchange_states, queue_states


class HttpAdmin:
    """Policies and listings through the management HTTP API (user needs ``policymaker``)."""

    name = "management API"

    def __init__(self, base_url: str, username: str, password: str, timeout_s: float = 10) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        token = b64encode(f"{username}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self.username = username

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call; JSON in and out.

        Raises:
            TopologyError: the API refuses (401/403/…); OSError when it cannot be reached.
        """
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - the URL is the operator's management URL
            self.base_url + path,
            data=data,
            method=method,
            headers={"Authorization": self._auth, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as response:  # noqa: S310
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise TopologyError(
                    f"management API refused user {self.username} ({exc.code}): check the "
                    "password and give the user the policymaker tag, or use --via rabbitmqctl"
                ) from None
            raise TopologyError(f"management API {method} {path} failed: HTTP {exc.code}") from None
        return json.loads(text) if text.strip() else None

    def _list(self, path: str) -> list[dict[str, Any]]:
        rows = self.request("GET", path)
        return list(rows or [])

    def read_state(self, vhost: str) -> BrokerState:
        v = urllib.parse.quote(vhost, safe="")
        columns = "name,type,durable,auto_delete,arguments,policy,messages"
        return BrokerState(
            exchanges=exchange_states(self._list(f"/api/exchanges/{v}")),
            queues=queue_states(self._list(f"/api/queues/{v}?columns={columns}")),
            bindings=frozenset(
                Binding(row["source"], row["destination"], row["routing_key"])
                for row in self._list(f"/api/bindings/{v}")
                if row["source"] and row["destination_type"] == "queue"
            ),
            policies={
                row["name"]: Policy(
                    name=row["name"],
                    pattern=row["pattern"],
                    definition=row["definition"],
                    priority=int(row["priority"]),
                    apply_to=row["apply-to"],
                )
                for row in self._list(f"/api/policies/{v}")
            },
        )

    def set_policies(self, vhost: str, policies: Sequence[Policy]) -> None:
        v = urllib.parse.quote(vhost, safe="")
        for policy in policies:
            body = policy_json(vhost, policy)
            del body["vhost"], body["name"]
            self.request(
                "PUT", f"/api/policies/{v}/{urllib.parse.quote(policy.name, safe='')}", body
            )
