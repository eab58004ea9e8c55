"""Sealing and opening one envelope, in µs: queues.envelope against a JOSE library, and where the
time goes.

    python -m bench.envelope [--runs 15] [--ops 1000] [--out FILE]

One realistic ``billing.charge.post`` envelope (tests/support/factories.py) under a generated
``fleet`` key, as the unit tests make them. Measured: ``seal`` and ``open_envelope`` as they are
(AES-GCM from ``cryptography`` under the module's strict compact parser), ``parse`` and
``open_envelope`` of what it made (a worker's way: the header read once per delivery),
``peek_header``; the same seal and open with joserfc doing the JOSE part, the way queues.envelope
did until issue 13 (header validated through ``json.dumps``; with today's header model, which is
itself faster than that version's); and the parts: header JSON ▶ model, AES-GCM with its
base64url, the payload's validation and serialization. Each figure is the median (and the
minimum) over ``--runs`` runs of ``--ops`` operations, the runs interleaved so that a noisy
moment hits every figure alike. The canary, a fixed pure-Python loop in ms, tells how fast the
machine was: compare two runs in canary units. No broker, no database; about 10 s. Prints a
table and writes the results as JSON (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import OctKey
from pydantic_core import to_json

from bench.measure import cpu_model
from queues.contracts import model_for
from queues.envelope import (
    EnvelopeHeader,
    OpenedMessage,
    open_envelope,
    parse,
    peek_header,
    peek_raw_header,
    seal,
)
from queues.errors import AuthenticationFailed, NotAuthorized, UnknownKid
from queues.keys import KeyRegistry, ProducerKey
from queues.wire import b64url_decode, b64url_encode
from tests.support.factories import sample

MESSAGE_TYPE = "billing.charge.post"
PRODUCER = "fleet"
GOAL_US = 30.0  # issue 13: sealed and opened in at most 30 µs each
RESULTS = Path(__file__).parent / "results" / "envelope.json"
BASE64URL = re.compile(rb"^[A-Za-z0-9_-]*$")
JOSE = jwe.JWERegistry(algorithms=["dir", "A256GCM"], strict_check_header=False)


def machine() -> dict[str, Any]:
    """What the numbers depend on."""
    cpu = cpu_model()
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        **{
            name: version(name) for name in ("cryptography", "pydantic", "pydantic-core", "joserfc")
        },
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def canary() -> float:
    """ms for a fixed pure-Python loop that allocates small dicts and strings, as opening an
    envelope does: the machine's speed at the moment."""
    started = time.perf_counter()
    total = 0
    for i in range(100_000):
        fields = {"n": i, "text": str(i)}
        total += len(fields["text"])
    assert total
    return (time.perf_counter() - started) * 1000


def joserfc_seal(payload: Any, key: ProducerKey) -> bytes:
    """The seal of queues.envelope before issue 13: the header model, then joserfc."""
    now = datetime.now(UTC)
    header = EnvelopeHeader(
        alg="dir",
        enc="A256GCM",
        kid=key.kid,
        message_id=uuid.uuid4(),
        message_type=payload.message_type,
        schema_version=payload.schema_version,
        producer=key.producer,
        created_at=now.replace(microsecond=now.microsecond // 1000 * 1000),
        correlation_id=None,
        entity_version=payload.header_entity_version(),
    )
    plaintext = payload.model_dump_json().encode()
    token = jwe.encrypt_compact(
        header.to_jose(), plaintext, OctKey.import_key(key.secret), registry=JOSE
    )
    return token.encode("ascii")


def joserfc_open(body: bytes, keys: KeyRegistry) -> OpenedMessage:
    """The open of queues.envelope before issue 13, joserfc decrypting: the same checks in the
    same order (asserted here, where they were typed errors: the cost is the same)."""
    raw = peek_raw_header(body)
    assert raw.get("alg") == "dir" and raw.get("enc") == "A256GCM" and "zip" not in raw
    _header, encrypted_key, iv, ciphertext, tag = body.split(b".")
    assert not encrypted_key and len(iv) == 16 and len(tag) == 22
    assert all(BASE64URL.match(part) for part in (iv, ciphertext, tag))
    assert "crit" not in raw and isinstance(raw.get("kid"), str) and raw["kid"]
    header = EnvelopeHeader.from_jose(raw)  # json.dumps, then pydantic from JSON
    key = keys.get(header.kid)
    if key is None:
        raise UnknownKid(header.kid)
    try:
        token = jwe.decrypt_compact(body, OctKey.import_key(key.secret), registry=JOSE)
    except (JoseError, ValueError):
        raise AuthenticationFailed() from None
    if header.producer != key.producer or not key.may_send(header.message_type):
        raise NotAuthorized()
    model = model_for(header.message_type, header.schema_version)
    payload = model.model_validate_json(token.plaintext or b"", strict=True)
    assert payload.header_entity_version() == header.entity_version
    return OpenedMessage(header=header, payload=payload)


def encrypted_parts(cipher: AESGCM, iv: bytes, plaintext: bytes, aad: bytes) -> list[bytes]:
    sealed = cipher.encrypt(iv, plaintext, aad)
    return [b64url_encode(iv), b64url_encode(sealed[:-16]), b64url_encode(sealed[-16:])]


def cases(keys: KeyRegistry) -> dict[str, Callable[[], object]]:
    """Name ▶ one operation. The sealed body and every part come from one envelope."""
    key = keys.sealing_key(PRODUCER)
    payload = sample(MESSAGE_TYPE)
    body = seal(payload, key).body
    parsed = parse(body)
    protected, _key, iv_part, ciphertext_part, tag_part = body.split(b".")
    header_text = b64url_decode(protected)
    iv, ciphertext, tag = (b64url_decode(p) for p in (iv_part, ciphertext_part, tag_part))
    cipher = AESGCM(key.secret)
    plaintext = payload.model_dump_json().encode()
    model = model_for(MESSAGE_TYPE, 1)
    fields = json.loads(header_text)
    return {
        "seal: joserfc (before)": lambda: joserfc_seal(payload, key),
        "seal": lambda: seal(payload, key),
        "open: joserfc (before)": lambda: joserfc_open(body, keys),
        "open": lambda: open_envelope(body, keys),
        "parse": lambda: parse(body),
        "open of a parsed envelope": lambda: open_envelope(parsed, keys),
        "peek_header": lambda: peek_header(body),
        "header: JSON text ▶ model (now)": lambda: EnvelopeHeader.model_validate_json(header_text),
        "header: json.loads ▶ json.dumps ▶ model (before)": lambda: EnvelopeHeader.from_jose(
            json.loads(header_text)
        ),
        "header: fields ▶ JSON text (seal)": lambda: to_json(fields),
        "AES-GCM decrypt, with base64url of IV, ciphertext, tag": lambda: cipher.decrypt(
            b64url_decode(iv_part),
            b64url_decode(ciphertext_part) + b64url_decode(tag_part),
            protected,
        ),
        "AES-GCM decrypt alone": lambda: cipher.decrypt(iv, ciphertext + tag, protected),
        "AES-GCM encrypt, with base64url of IV, ciphertext, tag": lambda: encrypted_parts(
            cipher, iv, plaintext, protected
        ),
        "AES-GCM encrypt alone": lambda: cipher.encrypt(iv, plaintext, protected),
        "AES-GCM key set-up (cached by queues.envelope)": lambda: AESGCM(key.secret),
        "payload: JSON ▶ model (strict)": lambda: model.model_validate_json(plaintext, strict=True),
        "payload: model ▶ JSON (seal)": lambda: payload.model_dump_json(),
    }


def check_interop(keys: KeyRegistry) -> bool:
    """The two ways understand each other: each opens what the other sealed."""
    key = keys.sealing_key(PRODUCER)
    payload = sample(MESSAGE_TYPE)
    ours = open_envelope(joserfc_seal(payload, key), keys).payload
    theirs = joserfc_open(seal(payload, key).body, keys).payload
    return ours == theirs == payload


def measure(
    operations: dict[str, Callable[[], object]], runs: int, ops: int
) -> tuple[dict[str, list[float]], list[float]]:
    """µs per operation of each run, runs interleaved; and the canary of each run."""
    samples: dict[str, list[float]] = {name: [] for name in operations}
    canaries = []
    for operation in operations.values():
        operation()  # warm: imports, caches, compiled patterns
    for _ in range(runs):
        canaries.append(canary())
        for name, operation in operations.items():
            started = time.perf_counter()
            for _ in range(ops):
                operation()
            samples[name].append((time.perf_counter() - started) / ops * 1e6)
    return samples, canaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs (median and minimum kept)")
    parser.add_argument("--ops", type=int, default=1000, help="operations per run and figure")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    options = parser.parse_args(argv)

    keys = KeyRegistry([ProducerKey.generate(PRODUCER, ["billing.*", "crm.*", "provisioning.*"])])
    if not check_interop(keys):
        print("joserfc and queues.envelope do not open each other's envelopes", file=sys.stderr)
        return 1
    operations = cases(keys)
    samples, canaries = measure(operations, options.runs, options.ops)
    figures = {
        name: {"median_us": round(statistics.median(s), 2), "min_us": round(min(s), 2)}
        for name, s in samples.items()
    }
    canary_ms = round(statistics.median(canaries), 2)
    body = seal(sample(MESSAGE_TYPE), keys.sealing_key(PRODUCER)).body

    print(f"envelope: {MESSAGE_TYPE}, {len(body)} bytes; canary {canary_ms} ms")
    print(f"{'':56} {'median µs':>10} {'min µs':>8}")
    for name, figure in figures.items():
        print(f"{name:56} {figure['median_us']:>10.1f} {figure['min_us']:>8.1f}")
    goal = {
        name: figures[name]["median_us"] <= GOAL_US
        for name in ("seal", "open", "open of a parsed envelope")
    }
    print(
        f"goal ≤ {GOAL_US:.0f} µs (median): "
        + ", ".join(f"{name} {'met' if met else 'missed'}" for name, met in goal.items())
    )
    document = {
        "benchmark": "envelope",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "message_type": MESSAGE_TYPE,
        "envelope_bytes": len(body),
        "runs": options.runs,
        "ops_per_run": options.ops,
        "canary_ms": canary_ms,
        "canary_ms_runs": [round(c, 2) for c in canaries],
        "goal_us": GOAL_US,
        "goal_met": goal,
        "figures": figures,
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"results: {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
