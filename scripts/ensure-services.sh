#!/usr/bin/env bash
# Checks that RabbitMQ (127.0.0.1:5672) and PostgreSQL (127.0.0.1:5432) answer; starts them when this
# machine can (DESIGN §9); otherwise says which one is down and how to start it, and exits non-zero.
set -u

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 seconds=$2
    for _ in $(seq "$seconds"); do
        port_open "$port" && return 0
        sleep 1
    done
    return 1
}

failed=0

if ! port_open 5672; then
    echo "RabbitMQ is not answering on 127.0.0.1:5672; starting it (rabbitmq-server -detached)" >&2
    if command -v rabbitmq-server >/dev/null 2>&1; then
        rabbitmq-server -detached >/dev/null 2>&1 || true
    fi
    if ! wait_port 5672 60; then
        echo "FATAL: RabbitMQ is down and could not be started. Start it with 'rabbitmq-server -detached' (as root)." >&2
        failed=1
    fi
fi
if port_open 5672 && command -v rabbitmqctl >/dev/null 2>&1; then
    # The port opens before the node finishes booting; wait until it serves.
    timeout 60 rabbitmqctl await_startup >/dev/null 2>&1 || {
        echo "FATAL: RabbitMQ accepts connections but did not finish starting ('rabbitmqctl await_startup')." >&2
        failed=1
    }
fi

if ! port_open 5432; then
    echo "PostgreSQL is not answering on 127.0.0.1:5432; starting it (pg_ctlcluster)" >&2
    if [ -d /etc/postgresql ] && command -v pg_ctlcluster >/dev/null 2>&1; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start >/dev/null 2>&1 || true
    fi
    if ! wait_port 5432 30; then
        echo "FATAL: PostgreSQL is down and could not be started. Start it with" \
            "'pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start'." >&2
        failed=1
    fi
fi

[ "$failed" -eq 0 ] && echo "services: RabbitMQ 127.0.0.1:5672 and PostgreSQL 127.0.0.1:5432 are up" >&2
exit "$failed"
