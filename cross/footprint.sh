#!/usr/bin/env bash
# Footprint per ARM target, under qemu-user on this x86_64 machine:
#   - the size of the `dist` binary (built by cross/build.sh if missing);
#   - the RSS of `brook serve` idle and after a short load (100,000 records produced and read
#     back by the native x86_64 `brook bench native --broker`; then over MQTT 50,000 QoS 1
#     messages from 4 publishers to 1 subscriber and 1,000 connected clients, 100 of them
#     publishing QoS 1 at 10/s for 10 s, by `brook bench mqtt[-fleet] --target`), minus the RSS
#     of qemu running a trivial program of the same target (a C `pause()`), so what remains is
#     Brook's share;
#   - what of that is Brook's own heap (the allocator's figures from /metrics: bytes in use in
#     its arenas, and large blocks mapped on their own, resident only where written); the rest
#     is mapped code and what qemu keeps for the code it translated.
# RSS is VmRSS/VmHWM of the qemu process from /proc. Emulation changes speed, not memory layout:
# the figure is close to, not equal to, what the board shows.
#   cross/footprint.sh [TARGET...]   (default: both targets)
set -euo pipefail
cd "$(dirname "$0")/.."
# The host build (the load's clients) with the caller's Rust, before cross/env.sh points RUSTC
# at Debian's: otherwise target/release would be rebuilt by another compiler and linker.
cargo build --release --locked --quiet
host_brook=./target/release/brook
# shellcheck source=cross/env.sh
. cross/env.sh
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

rss() { awk '/^VmRSS:/ {r=$2} /^VmHWM:/ {h=$2} END {print r, h}' "/proc/$1/status"; }
# The heap figures of a running brook serve (HTTP listener at $1): "IN_USE_KIB MAPPED_KIB".
heap() {
  local host=${1%:*} port=${1##*:}
  exec 3<>"/dev/tcp/$host/$port"
  printf 'GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" >&3
  awk '/^brook_heap_bytes\{state="in_use"\}/ {u=$2} /^brook_heap_bytes\{state="mapped"\}/ {m=$2}
       END {printf "%d %d\n", u/1024, m/1024}' <&3
  exec 3<&-
}

for target in "${targets[@]}"; do
  check_target "$target"
  bin=target/cross/$target/dist/brook
  [ -x "$bin" ] || bash cross/build.sh "$target" >/dev/null
  runner=$(runner_for "$target")
  cc_var="CC_${target//-/_}"
  printf '#include <unistd.h>\nint main(void) { pause(); return 0; }\n' >"$work/pause.c"
  "${!cc_var}" -O2 -o "$work/pause-$target" "$work/pause.c"
  $runner "$work/pause-$target" &
  base_pid=$!
  sleep 1
  read -r base_rss _ < <(rss "$base_pid")
  kill "$base_pid"; wait "$base_pid" 2>/dev/null || true

  data=$work/data-$target
  $runner "$bin" serve --data-dir "$data" --native 127.0.0.1:0 --http 127.0.0.1:0 \
    --mqtt 127.0.0.1:0 --kafka 127.0.0.1:0 2>"$work/log-$target" &
  pid=$!
  addr=""
  for _ in $(seq 1 300); do
    addr=$(grep -o 'native=[0-9.:]*' "$work/log-$target" | head -n 1 | cut -d= -f2 || true)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "$target: brook serve did not start" >&2; cat "$work/log-$target" >&2; exit 1; }
  sleep 1
  read -r idle _ < <(rss "$pid")
  http=$(grep -o 'http=[0-9.:]*' "$work/log-$target" | head -n 1 | cut -d= -f2)
  read -r heap_idle mapped_idle < <(heap "$http")
  "$host_brook" bench native --broker "$addr" --records 100000 --producers 2 --consumers 2 \
    --partitions 2 --json >"$work/bench-$target.json"
  mqtt=$(grep -o 'mqtt=[0-9.:]*' "$work/log-$target" | head -n 1 | cut -d= -f2)
  "$host_brook" bench mqtt --target "$mqtt" --messages 50000 --publishers 4 --qos 1 \
    --json >"$work/mqtt-$target.json"
  "$host_brook" bench mqtt-fleet --target "$mqtt" --clients 1000 --publishers 100 --rate 10 \
    --duration 10s --json >"$work/fleet-$target.json"
  echo "$target: MQTT fleet under emulation: $(cat "$work/fleet-$target.json")"
  read -r loaded peak < <(rss "$pid")
  read -r heap_loaded mapped_loaded < <(heap "$http")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  size=$(stat -c %s "$bin")
  echo "$target: dist binary $size bytes ($(awk "BEGIN {printf \"%.2f\", $size/1048576}") MiB);" \
    "brook serve RSS idle $((idle - base_rss)) KiB, after load $((loaded - base_rss)) KiB," \
    "peak $((peak - base_rss)) KiB (qemu baseline $base_rss KiB subtracted); Brook's heap in use" \
    "$heap_idle KiB idle, $heap_loaded KiB after load (plus large blocks mapped on their own," \
    "resident only where written: $mapped_idle / $mapped_loaded KiB)"
done
