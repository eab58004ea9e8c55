#!/usr/bin/env bash
# Debian tools the tests use: amqp-publish (amqp-tools: a foreign C publisher in the bad-input
# suite) and promtool (prometheus: validates deploy/prometheus). Installs them when missing and
# this is root (CI and the development machines are); otherwise says how, and fails.
set -u
missing=()
command -v amqp-publish >/dev/null 2>&1 || missing+=(amqp-tools)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing Debian packages the tests need: ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "FATAL: install them first: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: install the prometheus package for promtool without starting its daemon.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
fi
{ apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }; }
status=$?
[ "$created_policy" -eq 1 ] && rm -f "$policy"
if [ "$status" -ne 0 ]; then
    echo "FATAL: could not install ${missing[*]} with apt-get" >&2
    exit 1
fi
