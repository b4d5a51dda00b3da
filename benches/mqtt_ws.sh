#!/usr/bin/env bash
# MQTT over WebSockets against MQTT over TCP (BENCHMARKS.md): one `brook serve` (release build)
# with both listeners; benches/mqtt_ws.py (paho-mqtt, 5.0, QoS 1, 100-byte messages, 64 in
# flight, each message back to its publisher) alternates the two transports.
# Usage: benches/mqtt_ws.sh [MESSAGES] [REPEAT]   Needs: python3 with paho-mqtt (the test venv:
# BROOK_TEST_PYTHON=~/.cache/brook-ci/venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
repeat=${2:-3}
python=${BROOK_TEST_PYTHON:-python3}
cargo build --release --locked --quiet
work=$(mktemp -d)
spid=
trap '[ -n "$spid" ] && kill $spid 2>/dev/null; rm -rf "$work"' EXIT
printf '[listeners]\nmqtt_ws = "127.0.0.1:0"\n' > "$work/brook.toml"
BROOK_LOG=warn,brook::serve=info target/release/brook serve --config "$work/brook.toml" \
  --data-dir "$work/data" --native 127.0.0.1:0 --http 127.0.0.1:0 --mqtt 127.0.0.1:0 \
  --kafka 127.0.0.1:0 2> "$work/log" &
spid=$!
for _ in $(seq 100); do grep -q 'mqtt_ws=' "$work/log" && break; sleep 0.1; done
tcp=$(grep -o ' mqtt=[0-9.:]*' "$work/log" | head -n 1 | cut -d: -f2)
ws=$(grep -o 'mqtt_ws=[0-9.:]*' "$work/log" | head -n 1 | cut -d: -f2)
[ -n "$tcp" ] && [ -n "$ws" ] || { cat "$work/log" >&2; exit 1; }
echo "# paho-mqtt $("$python" -c 'import paho.mqtt; print(paho.mqtt.__version__)'); $(uname -m), $(nproc) cores, $(date -u +%F); $n messages of 100 bytes, QoS 1"
"$python" benches/mqtt_ws.py --tcp "$tcp" --ws "$ws" --pid "$spid" -n "$n" -r "$repeat"
