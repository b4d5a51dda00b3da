#!/usr/bin/env bash
# Memory of idle connections (recorded in BENCHMARKS.md): a fresh broker, then N idle
# MQTT 3.1.1 connections (benches/idle_clients.py, plain sockets), then all of them closed; then,
# on the same Brook, NATIVE idle native-protocol connections (the handshake, then
# nothing) come and go the same way. The broker's VmRSS at each stage. Brook
# and Mosquitto (if installed, MQTT only) in the same run.
#   benches/connections.sh [BROOK_BIN] [N] [NATIVE]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
n=${2:-2000}
native=${3:-500}
if [ -z "$bin" ]; then
  cargo build --release --locked --quiet
  bin=target/release/brook
fi
ulimit -n $((n + 256))
rss() { awk '$1 == "VmRSS:" {print $2}' "/proc/$1/status"; }
waitp() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
measure() { # name pid port [protocol count]
  local name=$1 pid=$2 port=$3 protocol=${4:-mqtt} n=${5:-$n} idle conn closed
  idle=$(rss "$pid")
  coproc CLIENTS { python3 benches/idle_clients.py "$protocol" 127.0.0.1 "$port" "$n"; }
  read -r _ <&"${CLIENTS[0]}"
  sleep 1
  conn=$(rss "$pid")
  echo >&"${CLIENTS[1]}"
  read -r _ <&"${CLIENTS[0]}"
  # Brook hands freed memory back every 10 s (housekeeping).
  sleep 12
  closed=$(rss "$pid")
  echo >&"${CLIENTS[1]}"
  wait "$CLIENTS_PID" 2>/dev/null || true
  echo "{\"broker\":\"$name\",\"connections\":$n,\"idle_kib\":$idle,\"connected_kib\":$conn,\"per_connection_bytes\":$(( (conn - idle) * 1024 / n )),\"after_close_kib\":$closed}"
}
dir=$(mktemp -d /tmp/brook-conns.XXXXXX)
trap 'rm -rf "$dir"' EXIT
port=$((28000 + RANDOM % 1000))
nport=$((port + 500))
printf '[mqtt]\nmax_connections = %d\n[native]\nmax_connections = %d\n[auth]\nmax_connections_per_address = %d\n' $((n + 64)) $((native + 64)) $((n + native + 64)) > "$dir/brook.toml"
"$bin" serve --config "$dir/brook.toml" --data-dir "$dir/data" --mqtt "127.0.0.1:$port" --native "127.0.0.1:$nport" --http 127.0.0.1:0 --kafka 127.0.0.1:0 >"$dir/log" 2>&1 &
pid=$!
waitp "$port"; sleep 0.5
measure brook "$pid" "$port"
measure brook-native "$pid" "$nport" native "$native"
kill "$pid"; wait "$pid" 2>/dev/null || true
if command -v mosquitto >/dev/null; then
  port=$((port + 1))
  printf 'listener %d 127.0.0.1\nallow_anonymous true\nmax_connections -1\n' "$port" > "$dir/m.conf"
  mosquitto -c "$dir/m.conf" >"$dir/m.log" 2>&1 &
  pid=$!
  waitp "$port"; sleep 0.5
  measure mosquitto "$pid" "$port"
  kill "$pid"; wait "$pid" 2>/dev/null || true
fi
