#!/usr/bin/env bash
# What logins and the ACL cost the Kafka API, recorded in BENCHMARKS.md: N 100-byte records
# produced with kcat (-P, acks=all) and consumed (-C -e), alternately against a `brook serve`
# (release build) with neither and one with a users file, an ACL file, and SASL SCRAM-SHA-512
# logins; both on the same machine in the same run, each run on a fresh data directory.
# Usage: benches/kafka_acl.sh [RECORDS] [REPEAT]      Needs: kcat (apt-get install kcat).
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}
repeat=${2:-3}
command -v kcat >/dev/null || { echo "kcat not found: apt-get install kcat" >&2; exit 1; }
cargo build --release --locked --quiet
brook=$(pwd)/target/release/brook
work=$(mktemp -d)
spid=
trap '[ -n "$spid" ] && kill $spid 2>/dev/null; rm -rf "$work"' EXIT
awk -v n="$records" 'BEGIN { pad = sprintf("%90s", ""); gsub(/ /, "x", pad); for (i = 0; i < n; i++) printf "%09d%s\n", i, pad }' > "$work/records"
echo pw-bench | "$brook" passwd "$work/users" bench >/dev/null
printf '[[rule]]\nuser = "bench"\nproduce = ["t*"]\nconsume = ["t*"]\ngroups = ["g-%%u"]\n' > "$work/acl.toml"
printf '[auth]\nusers_file = "%s"\nacl_file = "%s"\n' "$work/users" "$work/acl.toml" > "$work/secured.toml"
: > "$work/open.toml"
since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
rate() { awk -v n="$records" -v s="$1" 'BEGIN { printf "%d", n / s }'; }
echo "# kcat $(kcat -V 2>&1 | grep -o 'librdkafka [0-9.]*' | head -n 1); $(uname -m), $(nproc) cores, $(date -u +%F); $records records of 100 bytes"
for i in $(seq "$repeat"); do
  for mode in open secured; do
    rm -rf "$work/data" "$work/log"
    BROOK_LOG=warn,brook::serve=info "$brook" serve --config "$work/$mode.toml" --data-dir "$work/data" \
      --native 127.0.0.1:0 --http 127.0.0.1:0 --mqtt 127.0.0.1:0 --kafka 127.0.0.1:0 2> "$work/log" &
    spid=$!
    for _ in $(seq 100); do grep -q 'kafka=' "$work/log" && break; sleep 0.1; done
    kafka=$(grep -o 'kafka=[0-9.:]*' "$work/log" | head -n 1 | cut -d= -f2)
    [ -n "$kafka" ] || { cat "$work/log" >&2; exit 1; }
    sasl=()
    if [ "$mode" = secured ]; then
      sasl=(-X security.protocol=SASL_PLAINTEXT -X sasl.mechanisms=SCRAM-SHA-512 -X sasl.username=bench -X sasl.password=pw-bench)
    fi
    t0=$(date +%s%N)
    kcat -b "$kafka" "${sasl[@]}" -P -t "t$i" -X acks=all < "$work/records"
    p=$(since "$t0")
    t0=$(date +%s%N)
    got=$(kcat -b "$kafka" "${sasl[@]}" -C -t "t$i" -e -q -o beginning | wc -l)
    c=$(since "$t0")
    [ "$got" -eq "$records" ] || { echo "$mode run $i: consumed $got of $records" >&2; exit 1; }
    echo "{\"run\":$i,\"mode\":\"$mode\",\"produce_s\":$p,\"produce_per_s\":$(rate "$p"),\"consume_s\":$c,\"consume_per_s\":$(rate "$c")}"
    kill "$spid"; wait "$spid" 2>/dev/null || true; spid=
  done
done
