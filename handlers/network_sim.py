"""A network element simulator: a small real HTTP service for tests, demos and docker-compose.

Speaks what ``HttpNetworkElement`` speaks — ``POST /services/<id>/<activate|suspend|resume|
terminate>`` with a JSON body and an ``Idempotency-Key`` header — with configurable latency and
failure rate (503 before anything is applied). It remembers every idempotency key: a repeated key
gets the first answer again without re-applying it (a key reused for another request ▶ 422).

For tests: ``GET /state/<id>``, ``GET /stats`` (calls, applied, replayed, injected failures) and
``POST /control`` (``failure_rate``, ``latency_ms``, ``fail_next``: the next N calls answer 503
unapplied, ``lose_next``: the next N calls are applied but answer 503, as if the response was
lost). Run it with ``fleet simulate network``.

State rules: activate ▶ active (refused from terminated); suspend ▶ suspended and resume ▶ active
(unknown service ▶ 404, terminated ▶ 422); terminate ▶ terminated (unknown ▶ 404). 400 for a body
that is not a JSON object or lacks the activation fields, or a missing key.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_OPERATION_PATH = re.compile(r"^/services/([0-9a-fA-F-]{36})/(activate|suspend|resume|terminate)$")
_STATE_PATH = re.compile(r"^/state/([0-9a-fA-F-]{36})$")
_TARGET = {
    "activate": "active",
    "suspend": "suspended",
    "resume": "active",
    "terminate": "terminated",
}
_ACTIVATION_FIELDS = ("msisdn", "iccid", "plan_code")

Answer = tuple[int, dict[str, Any]]


@dataclass
class SimulatedNetwork:
    """The simulator's state, safe to share between request threads."""

    latency_ms: float = 0.0
    failure_rate: float = 0.0
    seed: int | None = None
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    stats: dict[str, int] = field(
        default_factory=lambda: {"calls": 0, "applied": 0, "replayed": 0, "failed": 0}
    )
    fail_next: int = 0
    lose_next: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(self.seed)
        self._answers: dict[str, tuple[str, Answer]] = {}

    def operate(self, service_id: str, operation: str, body: Any, key: str | None) -> Answer:
        """Apply one operation (or replay the answer its idempotency key got before)."""
        if self.latency_ms > 0:
            time.sleep(self.latency_ms / 1000)
        with self._lock:
            self.stats["calls"] += 1
            if not key:
                return 400, {"error": "missing Idempotency-Key"}
            fingerprint = json.dumps([service_id, operation, body], sort_keys=True)
            remembered = self._answers.get(key)
            if remembered is not None:
                if remembered[0] != fingerprint:
                    return 422, {"error": "idempotency key reused for another request"}
                self.stats["replayed"] += 1
                return remembered[1]
            if self.fail_next > 0 or self._random.random() < self.failure_rate:
                self.fail_next = max(0, self.fail_next - 1)
                self.stats["failed"] += 1
                return 503, {"error": "network element busy"}
            answer = self._apply(service_id, operation, body)
            self._answers[key] = (fingerprint, answer)
            if answer[0] < 300:
                self.stats["applied"] += 1
            if self.lose_next > 0:
                self.lose_next -= 1
                self.stats["failed"] += 1
                return 503, {"error": "response lost"}
            return answer

    def _apply(self, service_id: str, operation: str, body: Any) -> Answer:
        if not isinstance(body, dict):
            return 400, {"error": "body must be a JSON object"}
        service = self.services.get(service_id)
        if operation == "activate":
            if any(not isinstance(body.get(name), str) for name in _ACTIVATION_FIELDS):
                return 400, {"error": f"activate needs {', '.join(_ACTIVATION_FIELDS)}"}
            if service is not None and service["state"] == "terminated":
                return 422, {"error": "service is terminated"}
            service = {name: body[name] for name in _ACTIVATION_FIELDS}
            self.services[service_id] = service
        elif service is None:
            return 404, {"error": "unknown service"}
        elif service["state"] == "terminated" and operation != "terminate":
            return 422, {"error": "service is terminated"}
        service["state"] = _TARGET[operation]
        service["transitions"] = service.get("transitions", 0) + 1
        return 200, {"service_id": service_id, "state": service["state"]}

    def state(self, service_id: str) -> dict[str, Any] | None:
        with self._lock:
            service = self.services.get(service_id)
            return None if service is None else {"service_id": service_id, **service}

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.stats)

    def control(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Change latency, failure rate and the fail/lose counters at run time."""
        with self._lock:
            for name in ("latency_ms", "failure_rate", "fail_next", "lose_next"):
                if name in settings:
                    setattr(self, name, type(getattr(self, name))(settings[name]))
            return {
                "latency_ms": self.latency_ms,
                "failure_rate": self.failure_rate,
                "fail_next": self.fail_next,
                "lose_next": self.lose_next,
            }


class _Handler(BaseHTTPRequestHandler):
    server: NetworkSimulatorServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        network = self.server.network
        if self.path == "/stats":
            self._reply(200, network.snapshot())
        elif self.path == "/healthz":
            self._reply(200, {"ok": True})
        elif match := _STATE_PATH.match(self.path):
            state = network.state(match.group(1).lower())
            if state is None:
                self._reply(404, {"error": "unknown service"})
            else:
                self._reply(200, state)
        else:
            self._reply(404, {"error": "no such path"})

    def do_POST(self) -> None:
        body = self._read_body()
        network = self.server.network
        if self.path == "/control":
            if not isinstance(body, dict):
                self._reply(400, {"error": "body must be a JSON object"})
            else:
                self._reply(200, network.control(body))
        elif match := _OPERATION_PATH.match(self.path):
            key = self.headers.get("Idempotency-Key")
            status, answer = network.operate(match.group(1).lower(), match.group(2), body, key)
            self._reply(status, answer)
        else:
            self._reply(404, {"error": "no such path"})

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return None

    def _reply(self, status: int, document: dict[str, Any]) -> None:
        payload = json.dumps(document).encode()
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class NetworkSimulatorServer(ThreadingHTTPServer):
    """The simulator's HTTP server; ``port=0`` picks a free port (see ``server_address``)."""

    daemon_threads = True

    def __init__(self, host: str, port: int, network: SimulatedNetwork) -> None:
        super().__init__((host, port), _Handler)
        self.network = network

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


def serve_in_thread(
    network: SimulatedNetwork, host: str = "127.0.0.1", port: int = 0
) -> tuple[NetworkSimulatorServer, threading.Thread]:
    """Start the simulator in a daemon thread; stop it with ``server.shutdown()``."""
    server = NetworkSimulatorServer(host, port, network)
    thread = threading.Thread(target=server.serve_forever, name="network-sim", daemon=True)
    thread.start()
    return server, thread
