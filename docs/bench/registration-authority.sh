#!/bin/bash
# Enrollments per second directly against a CA and through one registration authority
# (docs/performance.md). Both servers on core 0, the load generator on core 1, loopback only.
# Run from the repository after: cargo build --release --bin estuary --example loadgen
set -e
REPO=$(pwd)
BIN=$REPO/target/release/estuary
LG=$REPO/target/release/examples/loadgen
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
bench() { # name port conns requests reuse
  local t0=$(cpu $TOP) r0=$(cpu $RA)
  local out=$(taskset -c 1 $LG --port $2 --ca top/ca-cert.pem --connections $3 --requests $4 $5 2>&1 | tail -3)
  local t1=$(cpu $TOP) r1=$(cpu $RA)
  echo "== $1: $out"
  local n=$(($3*$4))
  echo "   top CPU/request: $(echo "scale=1; ($t1-$t0)*1000000/$tck/$n" | bc) us; RA CPU/request: $(echo "scale=1; ($r1-$r0)*1000000/$tck/$n" | bc) us"
}
taskset -c 1 $LG --port 18085 --ca top/ca-cert.pem --connections 1 --requests 1 >/dev/null
taskset -c 1 $LG --port 18086 --ca top/ca-cert.pem --connections 1 --requests 1 >/dev/null
bench "direct, 16 keep-alive" 18085 16 500 --reuse
bench "through RA, 16 keep-alive" 18086 16 500 --reuse
bench "direct, 4 new-conn" 18085 4 500 ""
bench "through RA, 4 new-conn" 18086 4 500 ""
bench "direct, 16 keep-alive (again)" 18085 16 500 --reuse
bench "through RA, 16 keep-alive (again)" 18086 16 500 --reuse
kill $RA $TOP; wait 2>/dev/null || true
rm -rf "$WORK"
