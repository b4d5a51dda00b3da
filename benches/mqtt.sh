#!/usr/bin/env bash
# Runs the MQTT comparison recorded in BENCHMARKS.md in one go: `brook bench mqtt` against a
# fresh `brook serve` (every message appended to the log; QoS 1 acknowledged once fsynced) and
# against Mosquitto (Debian's 2.0.11; in-memory, as packaged), with the same clients, for QoS 0
# and QoS 1. Prints one JSON object per run. Usage: benches/mqtt.sh [MESSAGES] [REPEAT]
# Needs: mosquitto (apt-get install mosquitto; tests/run.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-200000}
repeat=${2:-3}
command -v mosquitto >/dev/null || { echo "mosquitto not found: apt-get install mosquitto" >&2; exit 1; }
cargo build --release --locked --quiet
brook=./target/release/brook
work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
mpid=$!
trap 'kill $mpid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
  sleep 0.1
done
echo "# $(mosquitto -h 2>/dev/null | head -n 1); $(uname -m), $(nproc) cores, $(date -u +%F)"
for qos in 0 1; do
  for i in $(seq "$repeat"); do
    echo "# run $i, QoS $qos: brook"
    "$brook" bench mqtt --qos "$qos" --messages "$messages" --publishers 8 --payload 100 --json
    echo "# run $i, QoS $qos: mosquitto"
    "$brook" bench mqtt --qos "$qos" --messages "$messages" --publishers 8 --payload 100 --json \
      --target "127.0.0.1:$port" --target-pid "$mpid"
  done
done
