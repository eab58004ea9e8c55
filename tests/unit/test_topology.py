"""The topology and roles as data: committed files in step with the code, regexes that mean it."""

from __future__ import annotations

import re
import subprocess
import sys
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from queues.contracts import MESSAGE_TYPES
from queues.roles import PRODUCER_TYPES, fleet_roles, password_hash, render_roles
from queues.topology import (
    TopologyConfig,
    TopologyError,
    desired_topology,
    queues_of,
    render_definitions,
    tier_name,
)
from workers.settings import Settings

DEPLOY = Path(__file__).parents[2] / "deploy" / "rabbitmq"
REGENERATE = "regenerate with `fleet topology export deploy/rabbitmq` and commit"


def test_committed_definitions_match_the_code() -> None:
    assert (DEPLOY / "definitions.json").read_text() == render_definitions(), REGENERATE


def test_committed_roles_match_the_code() -> None:
    assert (DEPLOY / "roles.json").read_text() == render_roles(), REGENERATE


def test_topology_defaults_are_the_settings_defaults() -> None:
    fields = Settings.model_fields
    assert TopologyConfig() == TopologyConfig(
        retry_tiers_s=tuple(fields["retry_tiers_s"].default),
        delivery_limit=fields["delivery_limit"].default,
        suspect_delivery_limit=fields["suspect_delivery_limit"].default,
        queue_max_length=fields["queue_max_length"].default,
    )


@pytest.mark.parametrize(
    ("seconds", "name"),
    [
        (1, "1s"),
        (5, "5s"),
        (30, "30s"),
        (90, "90s"),
        (120, "2m"),
        (600, "10m"),
        (3600, "1h"),
        (7200, "2h"),
    ],
)
def test_tier_names_read_like_durations(seconds: int, name: str) -> None:
    assert tier_name(seconds) == name


@pytest.mark.parametrize("tiers", [(), (0,), (5, 5), (60, 60)])
def test_tiers_must_be_positive_and_distinct(tiers: tuple[int, ...]) -> None:
    with pytest.raises(TopologyError):
        TopologyConfig(retry_tiers_s=tiers)


def test_every_queue_is_governed_by_exactly_its_own_policy() -> None:
    topology = desired_topology()
    for queue in topology.queues:
        matching = [p.name for p in topology.policies if re.fullmatch(p.pattern, queue.name)]
        assert matching == [f"fleet.{queue.name}"]


def test_every_catalogue_type_reaches_a_work_queue() -> None:
    assert all(queues_of(t) for t in MESSAGE_TYPES)
    assert queues_of("crm.customer.upsert") == ("crm", "billing")


def test_no_role_may_write_the_default_exchange() -> None:
    # The broker checks a publish to the default exchange ("") as a write to "amq.default".
    for role in fleet_roles():
        assert not re.search(role.permissions.write, "amq.default"), role.user


def test_producer_topic_permissions_mean_what_the_key_registry_patterns_mean() -> None:
    roles = {r.user: r for r in fleet_roles()}
    for producer, patterns in PRODUCER_TYPES.items():
        regex = roles[producer].fleet_topic_write
        assert regex is not None
        for message_type in (*MESSAGE_TYPES, "crm.x", "provisioning.service.x.y", "billingx"):
            expected = any(fnmatchcase(message_type, p) for p in patterns)
            assert bool(re.search(regex, message_type)) == expected, (producer, message_type)


def test_password_hash_is_rabbitmqs_salted_sha256() -> None:
    # RabbitMQ's documented example: salt 908D C60A, password "test12".
    assert password_hash("test12", bytes.fromhex("908DC60A")) == (
        "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
    )


def test_queues_does_not_load_dramatiq_or_workers() -> None:
    code = (
        "import sys, queues.topology, queues.roles; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('dramatiq', 'workers', 'handlers')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_role_that_may_write_fleet_has_a_topic_permission() -> None:
    # Without a topic permission on an exchange the broker allows every routing key (verified).
    for role in fleet_roles():
        if re.search(role.permissions.write, "fleet"):
            assert role.fleet_topic_write, role.user
