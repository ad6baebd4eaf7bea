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
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

psql_admin() { psql "${ADMIN_URL}" -q -c "$1"; }
ticks() { # utime+stime of the given pids, in clock ticks
    local sum=0
    for pid in "$@"; do
        [ -r "/proc/$pid/stat" ] || continue
        set -- $(sed 's/^.*) //' "/proc/$pid/stat")
        sum=$((sum + ${12} + ${13}))
    done
    echo "$sum"
}
postgres_pids() { pgrep -x postgres || pgrep -f 'postgres:' || true; }

start_node() { # dir port admin_port [database-url]
    local extra=()
    [ -n "${4:-}" ] && extra=(--database "$4")
    taskset -c 0 "$ESTUARY" serve --dev --data-dir "$1" --listen "127.0.0.1:$2" \
        --admin-listen "127.0.0.1:$3" "${extra[@]}" >"$1.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do grep -q "estuary: ready" "$1.log" && break; sleep 0.1; done
    echo "$pid"
}

run_bench() { # label port server-pids...
    local label="$1" port="$2"; shift 2
    local pids=("$@" $(postgres_pids))
    local before after
    before=$(ticks "${pids[@]}")
    local out
    out=$(taskset -c 1 "$ESTUARY" bench --url "https://localhost:$port/.well-known/est" \
        --ca "$WORK/node1/ca-cert.pem" --user estuser:estpwd --op enroll \
        --connections "$CONNECTIONS" --duration "${SECONDS_PER_RUN}s" --json)
    pids=("$@" $(postgres_pids))
    after=$(ticks "${pids[@]}")
    local requests rate p99
    requests=$(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["status_codes"].get("200", 0))')
    rate=$(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["ok_per_s"]))')
    p99=$(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["latency_ms"]["p99"], 1))')
    local hz; hz=$(getconf CLK_TCK)
    local cpu_us=$(( (after - before) * 1000000 / hz / (requests > 0 ? requests : 1) ))
    printf '| %s | %s | %s | %s |\n' "$label" "$rate" "$p99" "$cpu_us"
}

"$ESTUARY" ca init --data-dir "$WORK/node1" >/dev/null
for n in node2 node3 sqlite; do
    install -d -m 700 "$WORK/$n"
    cp -p "$WORK/node1/ca-cert.pem" "$WORK/node1/ca-key.pem" "$WORK/$n/"
done
taskset -a -p -c 0 $(postgres_pids) >/dev/null

echo "| setup | enrollments/s | p99 ms | server CPU µs per enrollment (nodes + PostgreSQL + HAProxy) |"
echo "| --- | --- | --- | --- |"

# One node on SQLite, directly.
pid=$(start_node "$WORK/sqlite" 18440 19440)
run_bench "1 node, SQLite, direct" 18440 "$pid"
kill "$pid"; wait "$pid" 2>/dev/null || true

for nodes in 1 2 3; do
    psql_admin "DROP DATABASE IF EXISTS estuary_bench WITH (FORCE)"
    psql_admin "CREATE DATABASE estuary_bench"
    pids=()
    servers=""
    for i in $(seq "$nodes"); do
        rm -f "$WORK/node$i/estuary.toml" "$WORK/node$i/server-"*.pem
        pids+=("$(start_node "$WORK/node$i" $((18440 + i)) $((19440 + i)) "$DB_URL")")
        servers+="    server node$i 127.0.0.1:$((18440 + i)) check inter 500ms"$'\n'
    done
    taskset -a -p -c 0 $(postgres_pids) >/dev/null
    if [ "$nodes" = 1 ]; then
        run_bench "1 node, PostgreSQL, direct" 18441 "${pids[@]}"
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
    run_bench "$nodes node(s), PostgreSQL, HAProxy" 18450 "${pids[@]}" "$hpid"
    kill "$hpid" "${pids[@]}"; wait 2>/dev/null || true
done
psql_admin "DROP DATABASE IF EXISTS estuary_bench WITH (FORCE)"
