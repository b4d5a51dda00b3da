#!/usr/bin/env bash
# What the durable delivery state costs (recorded in BENCHMARKS.md): `brook bench mqtt` with
# persistent subscribers (clean session 0), QoS 1 and QoS 2, alternately against two builds of
# `brook serve`, BEFORE (sessions stored about once a second) and AFTER (stored and flushed
# before every QoS 1/2 send), on the same machine in the same run, each run on a fresh data
# directory. The client is AFTER's `brook bench` (it has --persistent).
# Usage: benches/mqtt_delivery_state.sh BEFORE AFTER [MESSAGES] [REPEAT]
#   e.g. git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build --release)
#        benches/mqtt_delivery_state.sh /tmp/before/target/release/brook target/release/brook
set -euo pipefail
cd "$(dirname "$0")/.."
before=${1:?usage: benches/mqtt_delivery_state.sh BEFORE AFTER [MESSAGES] [REPEAT]}
after=${2:?usage: benches/mqtt_delivery_state.sh BEFORE AFTER [MESSAGES] [REPEAT]}
messages=${3:-100000}
repeat=${4:-3}
work=$(mktemp -d)
spid=
trap '[ -n "$spid" ] && kill $spid 2>/dev/null; rm -rf "$work"' EXIT
echo "# $(uname -m), $(nproc) cores, $(date -u +%F); $messages messages of 100 B, 8 publishers (64 in flight each) -> 1 persistent subscriber"
for i in $(seq "$repeat"); do
  for qos in 1 2; do
    for build in before after; do
      bin=$before
      [ "$build" = after ] && bin=$after
      rm -rf "$work/data" "$work/log"
      BROOK_LOG=warn,brook::serve=info "$bin" serve --data-dir "$work/data" --native 127.0.0.1:0 --http 127.0.0.1:0 \
        --mqtt 127.0.0.1:0 --kafka 127.0.0.1:0 2> "$work/log" &
      spid=$!
      for _ in $(seq 100); do grep -q 'mqtt=' "$work/log" && break; sleep 0.1; done
      mqtt=$(grep -o 'mqtt=[0-9.:]*' "$work/log" | head -n 1 | cut -d= -f2)
      [ -n "$mqtt" ] || { cat "$work/log" >&2; exit 1; }
      json=$("$after" bench mqtt --target "$mqtt" --target-pid "$spid" --persistent --qos "$qos" --inflight 64 \
        --messages "$messages" --json)
      echo "{\"run\":$i,\"build\":\"$build\",\"qos\":$qos,\"report\":$json}"
      kill "$spid"; wait "$spid" 2>/dev/null || true; spid=
    done
  done
done
