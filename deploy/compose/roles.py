"""docker-compose only: create the fleet's RabbitMQ users from deploy/rabbitmq/roles.json.

Runs once in the rabbitmq image (python3 and rabbitmqctl are there; the node's Erlang cookie
comes from the broker's data volume, mounted read-only). On a real broker node use
`fleet roles apply --vhost V` instead: it does the same with salted hashes in one definitions
import. This script exists because the fleet image has no rabbitmqctl.

Passwords come from FLEET_ROLE_PASSWORD_<USER> (the .env file); a role whose variable is unset
is skipped, and said so. Idempotent: an existing user gets its password, tags, permissions,
topic permissions and limits set again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

NODE = os.environ.get("RABBITMQ_NODE", "rabbit@rabbitmq")
VHOST = os.environ.get("RABBITMQ_VHOST", "/")
ROLES_FILE = os.environ.get("ROLES_FILE", "/fleet/roles.json")


def ctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-n", NODE, "-q", *args], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        # Never echo the arguments: they may hold a password.
        sys.exit(f"rabbitmqctl {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


def main() -> int:
    with open(ROLES_FILE) as handle:
        roles = json.load(handle)["users"]
    existing = {row["user"] for row in json.loads(ctl("list_users", "--formatter", "json"))}
    applied = 0
    for role in roles:
        user, variable = role["name"], role["password_env"]
        password = os.environ.get(variable)
        if not password:
            print(f"{user}: skipped ({variable} is not set)")
            continue
        ctl("change_password" if user in existing else "add_user", user, password)
        ctl("set_user_tags", user, *role["tags"])
        permissions = role["permissions"]
        ctl(
            "set_permissions", "-p", VHOST, user,
            permissions["configure"], permissions["write"], permissions["read"],
        )  # fmt: skip
        for topic in role["topic_permissions"]:
            ctl(
                "set_topic_permissions", "-p", VHOST, user,
                topic["exchange"], topic["write"], topic["read"],
            )  # fmt: skip
        ctl("set_user_limits", user, json.dumps(role["limits"]))
        print(f"{user}: applied")
        applied += 1
    print(f"{applied} of {len(roles)} roles applied on {NODE}, vhost {VHOST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
