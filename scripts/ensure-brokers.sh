#!/usr/bin/env bash
# Makes sure the brokers the queue tests use answer on their usual ports: Redis on
# 127.0.0.1:6379, RabbitMQ on :5672 (guest/guest) and NATS with JetStream on :4222. Uses
# the ones running; otherwise installs Debian's redis-server, rabbitmq-server and
# nats-server and starts them (needs root). The tests also start private instances of each
# (to restart them), so the binaries must be installed even where the services run.
set -euo pipefail

listening() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() {
    for _ in $(seq 1 300); do
        listening "$2" && return 0
        sleep 0.2
    done
    echo "$1 did not start on 127.0.0.1:$2" >&2
    exit 1
}

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
command -v nats-server >/dev/null || missing+=(nats-server)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! listening 6379; then
    echo "== starting Redis"
    redis-server --bind 127.0.0.1 --port 6379 --save '' --daemonize yes >/dev/null
    wait_for Redis 6379
fi
if ! listening 4222; then
    echo "== starting NATS with JetStream"
    mkdir -p /var/lib/hookline-test-nats
    nohup nats-server -js -a 127.0.0.1 -p 4222 -sd /var/lib/hookline-test-nats >/dev/null 2>&1 &
    wait_for NATS 4222
fi
if ! listening 5672; then
    echo "== starting RabbitMQ"
    # The service, or the server itself where there is no service manager (containers).
    service rabbitmq-server start >/dev/null 2>&1 || (nohup rabbitmq-server >/dev/null 2>&1 &)
    wait_for RabbitMQ 5672
    # It listens before it has booted; a client may meanwhile be answered with bytes that
    # are not AMQP. The tests' own waits catch a boot this one cannot see (no cookie).
    timeout 120 rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
