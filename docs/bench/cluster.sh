#!/usr/bin/env bash
# Enrollments/s and CPU per enrollment with 1, 2 and 3 nodes on one PostgreSQL database behind
# HAProxy, against one node on SQLite, on one machine (docs/performance.md "Several nodes on
# PostgreSQL"). Everything the server side runs (nodes, PostgreSQL, HAProxy) is pinned to core
# 0 and `estuary bench` to core 1, so "server CPU per enrollment" adds up the node processes,
# every PostgreSQL process and HAProxy.
#
# Needs: a release build (cargo build --release), postgresql and haproxy installed, PostgreSQL
# running with a role that may create databases in $ADMIN_URL (.ci/run creates estuary_test).
# Usage: docs/bench/cluster.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_RUN="${1:-15}"
CONNECTIONS="${2:-64}"
ESTUARY="$PWD/target/release/estuary"
ADMIN_URL="${ADMIN_URL:-postgres://estuary_test:estuary_test@127.0.0.1:5432/postgres?sslmode=disable}"
DB_URL="${ADMIN_URL%/postgres*}/estuary_bench?sslmode=disable"
WORK="$(mktemp -d)"
# The nodes are started in command substitutions (not jobs of this shell): stop them by path.
trap 'pkill -f -- "--data-dir $WORK/" 2>/dev/null; pkill -f -- "-f $WORK/haproxy.cfg" 2>/dev/null; sleep 0.5; rm -rf "$WORK"' EXIT

psql_admin() { psql "${ADMIN_URL}" -q -c "$1"; }
ticks() { # utime+stime of the given pids, in clock ticks
    local sum=0
    for pid in "$@"; do
        [ "$pid" != - ] && [ -r "/proc/$pid/stat" ] || continue
        set -- $(sed 's/^.*) //' "/proc/$pid/stat")
        sum=$((sum + ${12} + ${13}))
    done
    echo "$sum"
}
postgres_pids() { pgrep -f '^/usr/lib/postgresql/.*/postgres|^postgres:' || true; }
pin_postgres() { for pid in $(postgres_pids); do taskset -a -p -c 0 "$pid" >/dev/null || true; done; }

start_node() { # dir port admin_port [database-url]
    # A benchmark's load comes from one address: no per-address rate limit.
    printf '[rate_limits]\nper_address_per_minute = 0\n' >"$1/estuary.toml"
    chmod 600 "$1/estuary.toml"
    local extra=()
    [ -n "${4:-}" ] && extra=(--database "$4")
    taskset -c 0 "$ESTUARY" serve --dev --data-dir "$1" --listen "127.0.0.1:$2" \
        --admin-listen "127.0.0.1:$3" "${extra[@]}" >"$1.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do grep -q "estuary: ready" "$1.log" && break; sleep 0.1; done
    echo "$pid"
}

run_bench() { # label port haproxy-pid|- node-pids...
    local label="$1" port="$2" hpid="$3"; shift 3
    local nodes_before pg_before hap_before nodes_after pg_after hap_after
    nodes_before=$(ticks "$@"); pg_before=$(ticks $(postgres_pids)); hap_before=$(ticks "$hpid")
    local out
    out=$(taskset -c 1 "$ESTUARY" bench --url "https://localhost:$port/.well-known/est" \
        --ca "$WORK/node1/ca-cert.pem" --user estuser:estpwd --op enroll \
        --connections "$CONNECTIONS" --duration "${SECONDS_PER_RUN}s" --json)
    nodes_after=$(ticks "$@"); pg_after=$(ticks $(postgres_pids)); hap_after=$(ticks "$hpid")
    echo "$out" | python3 -c '
import json, sys
d = json.load(sys.stdin)
label, hz, nodes, pg, hap = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
ok = d["status_codes"].get("200", 0) or 1
us = lambda ticks: round(ticks * 1e6 / hz / ok)
others = {k: v for k, v in d["status_codes"].items() if k != "200"}
rate, p99 = round(d["ok_per_s"]), d["latency_ms"]["p99"]
print("| %s | %d | %.1f | %d | %d | %d | %d | %s |" % (label, rate, p99, us(nodes + pg + hap), us(nodes), us(pg), us(hap), others or ""))
' "$label" "$(getconf CLK_TCK)" $((nodes_after - nodes_before)) $((pg_after - pg_before)) $((hap_after - hap_before))
}

"$ESTUARY" ca init --data-dir "$WORK/node1" >/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/warmup.key" \
    -subj /CN=warmup -outform DER 2>/dev/null | base64 >"$WORK/warmup.csr"
for n in node2 node3 sqlite; do
    install -d -m 700 "$WORK/$n"
    cp -p "$WORK/node1/ca-cert.pem" "$WORK/node1/ca-key.pem" "$WORK/$n/"
done
pin_postgres

echo "| setup | enrollments/s | p99 ms | server CPU µs per enrollment | of which nodes | PostgreSQL | HAProxy | other statuses |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"

# One node on SQLite, directly.
pid=$(start_node "$WORK/sqlite" 18440 19440)
run_bench "1 node, SQLite, direct" 18440 - "$pid"
kill "$pid"; wait "$pid" 2>/dev/null || true

for nodes in 1 2 3; do
    psql_admin "DROP DATABASE IF EXISTS estuary_bench WITH (FORCE)" 2>/dev/null
    psql_admin "CREATE DATABASE estuary_bench"
    pids=()
    servers=""
    for i in $(seq "$nodes"); do
        pids+=("$(start_node "$WORK/node$i" $((18440 + i)) $((19440 + i)) "$DB_URL")")
        servers+="    server node$i 127.0.0.1:$((18440 + i)) check inter 500ms"$'\n'
    done
    pin_postgres
    if [ "$nodes" = 1 ]; then
        run_bench "1 node, PostgreSQL, direct" 18441 - "${pids[@]}"
    fi
    cat >"$WORK/haproxy.cfg" <<CFG
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend est
    bind 127.0.0.1:18450
    default_backend nodes
backend nodes
    balance roundrobin
$servers
CFG
    taskset -c 0 haproxy -f "$WORK/haproxy.cfg" -db >/dev/null 2>&1 &
    hpid=$!
    sleep 1
    # Warm every node's password cache (bench's one warm-up request reaches one node; a cold
    # node answers a burst of first requests from one address with 429, one check at a time).
    for _ in $(seq $((2 * nodes))); do
        curl -s -o /dev/null --cacert "$WORK/node1/ca-cert.pem" -u estuser:estpwd \
            -H 'Content-Type: application/pkcs10' --data-binary @"$WORK/warmup.csr" \
            https://localhost:18450/.well-known/est/simpleenroll
    done
    run_bench "$nodes node(s), PostgreSQL, HAProxy" 18450 "$hpid" "${pids[@]}"
    kill "$hpid" "${pids[@]}"; wait 2>/dev/null || true
done
psql_admin "DROP DATABASE IF EXISTS estuary_bench WITH (FORCE)"
