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
printf '[rate_limits]\nper_address_per_minute = 0\n' > top/estuary.toml
taskset -c 0 $BIN serve --dev --data-dir top --listen 127.0.0.1:18085 --admin-listen 127.0.0.1:0 > top.out 2> top.log &
TOP=$!
until grep -q "estuary: ready" top.out; do sleep 0.2; done
cp top/ca-cert.pem ra/upstream-ca.pem
printf '[upstream]\nurl = "https://localhost:18085/.well-known/est"\nca = "upstream-ca.pem"\nuser = "estuser"\npassword = "estpwd"\n\n[rate_limits]\nper_address_per_minute = 0\n' > ra/estuary.toml
taskset -c 0 $BIN serve --dev --data-dir ra --listen 127.0.0.1:18086 --admin-listen 127.0.0.1:0 > ra.out 2> ra.log &
RA=$!
until grep -q "estuary: ready" ra.out; do sleep 0.2; done
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
run "direct, 16 keep-alive" 18085 16 8000
run "through RA, 16 keep-alive" 18086 16 8000
run "direct, 4 new-conn" 18085 4 2000 --new-connection-per-request
run "through RA, 4 new-conn" 18086 4 2000 --new-connection-per-request
run "direct, 16 keep-alive (again)" 18085 16 8000
run "through RA, 16 keep-alive (again)" 18086 16 8000
kill $RA $TOP; wait 2>/dev/null || true
rm -rf "$WORK"
