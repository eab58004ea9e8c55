"""How a vhost differs from the desired topology, each difference with what to do about it.

Pure: it compares a ``BrokerState`` an admin backend listed with a ``Topology``, and talks to no
broker (``queues.topology.reconcile`` does the listing, and the applying).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from queues.topology.entities import Exchange, Policy, Topology
from queues.topology.names import (
    DOMAINS,
    FLEET_EXCHANGE,
    POLICY_PREFIX,
    POLICY_PRIORITY,
    QUEUE_ARGUMENTS,
    UNROUTABLE_QUEUE,
    policy_name,
)
from queues.topology.state import BrokerState, ExchangeState, QueueState

APPLY = "run `fleet topology apply`"


def exchange_differences(want: Exchange, have: ExchangeState) -> list[str]:
    problems = []
    if have.type != want.type:
        problems.append(f"type {have.type}, want {want.type}")
    if not have.durable or have.auto_delete:
        problems.append("not durable or auto-delete")
    if have.internal != want.internal:
        problems.append(f"internal={have.internal}, want {want.internal}")
    if dict(have.arguments) != dict(want.arguments):
        problems.append(f"arguments {dict(have.arguments)}, want {dict(want.arguments)}")
    return problems


def queue_differences(have: QueueState) -> list[str]:
    problems = []
    if have.type != "quorum":
        problems.append(f"type {have.type}, want quorum")
    if not have.durable or have.auto_delete:
        problems.append("not durable or auto-delete")
    extra = sorted(set(have.arguments) - set(QUEUE_ARGUMENTS))
    if extra:
        problems.append(f"declare arguments {', '.join(extra)} (tunables belong in policies)")
    return problems


def definition_diff(have: Policy, want: Policy) -> str:
    keys = sorted(set(have.definition) | set(want.definition))
    changes = [
        f"{k}: {have.definition.get(k, '∅')} → {want.definition.get(k, '∅')}"
        for k in keys
        if have.definition.get(k) != want.definition.get(k)
    ]
    if have.pattern != want.pattern:
        changes.append(f"pattern: {have.pattern} → {want.pattern}")
    if have.priority != want.priority:
        changes.append(f"priority: {have.priority} → {want.priority}")
    if have.apply_to != want.apply_to:
        changes.append(f"apply-to: {have.apply_to} → {want.apply_to}")
    return "; ".join(changes)


def _owned_queue_name(name: str) -> bool:
    return name == UNROUTABLE_QUEUE or name.split(".", 1)[0] in DOMAINS


@dataclass(frozen=True)
class Finding:
    """One difference between the broker and the desired topology, and what to do about it."""

    kind: Literal["exchange", "queue", "binding", "policy"]
    name: str
    problem: Literal["missing", "different", "extra", "not governing"]
    detail: str
    todo: str

    def to_json(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "problem": self.problem,
            "detail": self.detail,
            "todo": self.todo,
        }


def compare(topology: Topology, state: BrokerState, vhost: str) -> list[Finding]:
    """Every difference between ``state`` and ``topology``, each with what to do."""
    findings: list[Finding] = []
    p = f"-p {vhost} " if vhost != "/" else ""

    for e in topology.exchanges:
        have = state.exchanges.get(e.name)
        if have is None:
            findings.append(Finding("exchange", e.name, "missing", "not declared", APPLY))
        elif problems := exchange_differences(e, have):
            findings.append(
                Finding(
                    "exchange",
                    e.name,
                    "different",
                    "; ".join(problems),
                    "an exchange never changes in place: delete it (management UI or "
                    f"rabbitmqadmin; publishes fail until it is back), then {APPLY}",
                )
            )
    for name in sorted(state.exchanges.keys() - topology.exchange_names()):
        if name.startswith(FLEET_EXCHANGE):
            findings.append(
                Finding(
                    "exchange",
                    name,
                    "extra",
                    "not part of the topology",
                    "delete it once nothing publishes to it",
                )
            )

    wanted_queues = {q.name for q in topology.queues}
    for q in topology.queues:
        have_q = state.queues.get(q.name)
        if have_q is None:
            findings.append(Finding("queue", q.name, "missing", "not declared", APPLY))
        elif problems := queue_differences(have_q):
            findings.append(
                Finding(
                    "queue",
                    q.name,
                    "different",
                    "; ".join(problems),
                    f"a queue's type and declare arguments never change in place: stop its "
                    f"consumers, drain it ({have_q.messages} messages), "
                    f"rabbitmqctl delete_queue {p}{q.name}, then {APPLY}",
                )
            )
        elif have_q.policy is not None and have_q.policy != policy_name(q.name):
            # Only a named other policy counts: the management API lists a queue's policy only
            # after its next stats emission (~5 s), so "none" may just mean "not yet known".
            findings.append(
                Finding(
                    "queue",
                    q.name,
                    "not governing",
                    f"governed by {have_q.policy}, not {policy_name(q.name)}",
                    f"{APPLY}; if another policy still wins, clear it or give it a priority "
                    f"below {POLICY_PRIORITY}",
                )
            )
    for name in sorted(state.queues.keys() - wanted_queues):
        if _owned_queue_name(name):
            findings.append(
                Finding(
                    "queue",
                    name,
                    "extra",
                    f"not part of the topology, holds {state.queues[name].messages} messages",
                    f"a leftover (e.g. a removed retry tier drains by itself): once empty, "
                    f"rabbitmqctl delete_queue {p}{name} and clear_policy {p}{policy_name(name)}",
                )
            )

    wanted_bindings = set(topology.bindings)
    for b in topology.bindings:
        if b not in state.bindings:
            findings.append(
                Finding("binding", str(b), "missing", "messages for it do not arrive", APPLY)
            )
    owned_sources = topology.exchange_names()
    for b in sorted(state.bindings - wanted_bindings):
        if b.source in owned_sources:
            findings.append(
                Finding(
                    "binding",
                    str(b),
                    "extra",
                    "routes messages where the topology does not",
                    f"unbind it (management UI, or queue.unbind from a client): "
                    f"{b.destination} gets {b.routing_key or 'everything'} from {b.source}",
                )
            )

    wanted_policies = {pol.name for pol in topology.policies}
    for pol in topology.policies:
        have_p = state.policies.get(pol.name)
        if have_p is None:
            findings.append(
                Finding(
                    "policy",
                    pol.name,
                    "missing",
                    f"queue {pol.name.removeprefix(POLICY_PREFIX)} runs without its limits "
                    "and dead-lettering",
                    APPLY,
                )
            )
        elif not have_p.same_as(pol):
            findings.append(
                Finding("policy", pol.name, "different", definition_diff(have_p, pol), APPLY)
            )
    for name in sorted(state.policies.keys() - wanted_policies):
        if name.startswith(POLICY_PREFIX):
            findings.append(
                Finding(
                    "policy",
                    name,
                    "extra",
                    f"matches {state.policies[name].pattern}, not part of the topology",
                    f"once its queue is gone: rabbitmqctl clear_policy {p}{name}",
                )
            )
    return findings
