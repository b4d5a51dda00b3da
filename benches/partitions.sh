#!/usr/bin/env bash
# Threads and memory of `brook serve` holding many partitions (recorded in BENCHMARKS.md):
# starts a fresh server on loopback, creates N one-partition topics (default 1000) with the
# CLI, appends one record to each, and prints the server's thread count and resident set
# before and after.   benches/partitions.sh [BROOK_BIN] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
n=${2:-1000}
if [ -z "$bin" ]; then
  cargo build --release --locked --quiet
  bin=target/release/brook
fi
dir=$(mktemp -d /tmp/brook-partitions.XXXXXX)
port=$((27000 + RANDOM % 1000))
printf '[log]\nmax_topics = %d\nmax_partitions = %d\n' $((n + 16)) $((n + 64)) > "$dir/brook.toml"
"$bin" serve --config "$dir/brook.toml" --data-dir "$dir/data" --native "127.0.0.1:$port" --http 127.0.0.1:0 --mqtt "" --kafka "" >"$dir/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
field() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$pid/status"; }
echo "{\"stage\":\"idle\",\"threads\":$(field Threads),\"rss_kib\":$(field VmRSS)}"
start=$SECONDS
export BROOK_BROKER="127.0.0.1:$port"
for i in $(seq "$n"); do
  "$bin" topics create "p$i" --partitions 1 >/dev/null
done
for i in $(seq "$n"); do
  echo "record" | "$bin" produce --topic "p$i" >/dev/null
done
echo "{\"stage\":\"$n partitions, one record each\",\"threads\":$(field Threads),\"rss_kib\":$(field VmRSS),\"secs\":$((SECONDS - start))}"
