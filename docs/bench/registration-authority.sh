#!/bin/bash
# Enrollments per second directly against a CA and through one registration authority
# (docs/performance.md). Both servers on core 0, `estuary bench` on core 1, loopback only.
# Run from the repository after: cargo build --release --bin estuary
set -e
REPO=$(pwd)
BIN=$REPO/target/release/estuary
WORK=$(mktemp -d)
cd "$WORK"
mkdir -p top ra
# start NAME DIR: `estuary serve` on a free loopback port, pinned to core 0; waits (at most
# 60 s) for its "estuary: ready" line and stops if it exits first. Sets PID and PORT.
start() {
  taskset -c 0 $BIN serve --dev --data-dir "$2" --listen 127.0.0.1:0 --admin-listen "" > "$1.out" 2> "$1.log" &
  PID=$!
  for _ in $(seq 300); do
    grep -qs "estuary: ready" "$1.out" && break
    kill -0 $PID 2>/dev/null || { echo "$1 exited at start:"; cat "$1.log"; exit 1; }
    sleep 0.2
  done
  grep -qs "estuary: ready" "$1.out" || { echo "$1 not ready after 60 s"; kill $PID; exit 1; }
  PORT=$(sed -n 's|^estuary: listening on https://127.0.0.1:\([0-9]*\)/.*|\1|p' "$1.out" | head -1)
  [ -n "$PORT" ] || { echo "$1 printed no listening address"; exit 1; }
}
trap 'kill ${PID:-} ${RA:-} ${TOP:-} 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
printf '[rate_limits]\nper_address_per_minute = 0\n' > top/estuary.toml
start top top
TOP=$PID TOP_PORT=$PORT
cp top/ca-cert.pem ra/upstream-ca.pem
printf '[upstream]\nurl = "https://localhost:%s/.well-known/est"\nca = "upstream-ca.pem"\nuser = "estuser"\npassword = "estpwd"\n\n[rate_limits]\nper_address_per_minute = 0\n' $TOP_PORT > ra/estuary.toml
start ra ra
RA=$PID RA_PORT=$PORT
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
tck=$(getconf CLK_TCK)
# name port connections requests [--new-connection-per-request]
# (bench sends one warm-up enrollment first, which puts the credentials in the password cache
# of the server it talks to; the RA's own credentials at the CA are warmed by its first forward.)
run() {
  local t0=$(cpu $TOP) r0=$(cpu $RA)
  local out=$(taskset -c 1 $BIN bench --url https://localhost:$2/.well-known/est --ca top/ca-cert.pem \
    --user estuser:estpwd --connections $3 --requests $4 $5 2>&1)
  local t1=$(cpu $TOP) r1=$(cpu $RA)
  echo "== $1:"
  echo "$out"
  echo "   top CPU/request: $(echo "scale=1; ($t1-$t0)*1000000/$tck/$4" | bc) us; RA CPU/request: $(echo "scale=1; ($r1-$r0)*1000000/$tck/$4" | bc) us"
}
run "direct, 16 keep-alive" $TOP_PORT 16 8000
run "through RA, 16 keep-alive" $RA_PORT 16 8000
run "direct, 4 new-conn" $TOP_PORT 4 2000 --new-connection-per-request
run "through RA, 4 new-conn" $RA_PORT 4 2000 --new-connection-per-request
run "direct, 16 keep-alive (again)" $TOP_PORT 16 8000
run "through RA, 16 keep-alive (again)" $RA_PORT 16 8000
