#!/usr/bin/env bash
# The Kafka API benchmark recorded in BENCHMARKS.md, in one go against one fresh `brook serve`
# (release build): N 100-byte records produced with kcat (-P, acks=all, librdkafka's default
# batching) to Brook's Kafka listener and consumed with kcat (-C -e); then the same records
# through the native protocol (`brook produce --durability durable`, `brook consume`).
# acks=all and durable both mean fsynced before the acknowledgement.
# Usage: benches/kafka.sh [RECORDS] [REPEAT]      Needs: kcat (apt-get install kcat).
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}
repeat=${2:-3}
command -v kcat >/dev/null || { echo "kcat not found: apt-get install kcat" >&2; exit 1; }
cargo build --release --locked --quiet
brook=$(pwd)/target/release/brook
work=$(mktemp -d)
trap 'kill $spid 2>/dev/null; wait $spid 2>/dev/null; rm -rf "$work"' EXIT
# 100-byte records (99 characters and the newline kcat and brook produce cut at).
awk -v n="$records" 'BEGIN { pad = sprintf("%90s", ""); gsub(/ /, "x", pad); for (i = 0; i < n; i++) printf "%09d%s\n", i, pad }' > "$work/records"
BROOK_LOG=warn,brook::serve=info "$brook" serve --data-dir "$work/data" --native 127.0.0.1:0 \
  --http 127.0.0.1:0 --mqtt 127.0.0.1:0 --kafka 127.0.0.1:0 2> "$work/log" &
spid=$!
for _ in $(seq 100); do grep -q 'kafka=' "$work/log" && break; sleep 0.1; done
kafka=$(grep -o 'kafka=[0-9.:]*' "$work/log" | head -n 1 | cut -d= -f2)
native=$(grep -o 'native=[0-9.:]*' "$work/log" | head -n 1 | cut -d= -f2)
[ -n "$kafka" ] && [ -n "$native" ] || { cat "$work/log" >&2; exit 1; }
# Seconds since a `date +%s%N` stamp, and records per second over them.
since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
rate() { awk -v n="$records" -v s="$1" 'BEGIN { printf "%d", n / s }'; }
echo "# kcat $(kcat -V 2>&1 | grep -o 'librdkafka [0-9.]*' | head -n 1); $(uname -m), $(nproc) cores, $(date -u +%F); $records records of 100 bytes"
for i in $(seq "$repeat"); do
  t=kafka$i
  t0=$(date +%s%N)
  kcat -b "$kafka" -P -t "$t" -X acks=all < "$work/records"
  p=$(since "$t0")
  t0=$(date +%s%N)
  got=$(kcat -b "$kafka" -C -t "$t" -e -q -o beginning | wc -l)
  c=$(since "$t0")
  [ "$got" -eq "$records" ] || { echo "kafka run $i: consumed $got of $records" >&2; exit 1; }
  echo "{\"run\":$i,\"path\":\"kafka (kcat, acks=all)\",\"produce_s\":$p,\"produce_per_s\":$(rate "$p"),\"consume_s\":$c,\"consume_per_s\":$(rate "$c")}"
  t=native$i
  BROOK_BROKER=$native "$brook" topics create "$t" >/dev/null
  t0=$(date +%s%N)
  BROOK_BROKER=$native "$brook" produce --topic "$t" --durability durable < "$work/records"
  p=$(since "$t0")
  t0=$(date +%s%N)
  got=$(BROOK_BROKER=$native "$brook" consume --topic "$t" --from earliest --count "$records" | wc -l)
  c=$(since "$t0")
  [ "$got" -eq "$records" ] || { echo "native run $i: consumed $got of $records" >&2; exit 1; }
  echo "{\"run\":$i,\"path\":\"native (brook produce, durable)\",\"produce_s\":$p,\"produce_per_s\":$(rate "$p"),\"consume_s\":$c,\"consume_per_s\":$(rate "$c")}"
done
echo "# brook serve peak RSS: $(grep VmHWM /proc/$spid/status | awk '{print $2, $3}')"
