#!/usr/bin/env bash
# Runs the storage benchmarks recorded in BENCHMARKS.md, on the filesystem of DIR (default: a
# fresh directory under the current one), and prints one JSON object per run plus the disk's own
# sequential write speed. Usage: benches/storage.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-./brook-bench-runs}
mkdir -p "$base"
cargo build --release --locked --quiet
brook=./target/release/brook
n=0
run() {
  n=$((n + 1))
  local d="$base/run-$n"
  rm -rf "$d"
  echo "# brook bench storage $*"
  "$brook" bench storage --dir "$d" --json "$@"
  rm -rf "$d"
}
echo "# disk sequential write (dd, 1 GiB, O_DIRECT)"
dd if=/dev/zero of="$base/dd.tmp" bs=1M count=1024 oflag=direct 2>&1 | tail -n 1
rm -f "$base/dd.tmp"
run --records 1000000 --record-size 100 --partitions 4
run --records 1000000 --record-size 100 --partitions 4 --durability durable --producers 8 --batch 100
run --records 1000000 --record-size 100 --partitions 4 --durability durable --producers 64 --batch 1
run --records 200000 --record-size 100 --partitions 4 --durability durable --producers 8 --batch 100 --fsync-delay 10ms
run --records 100000 --record-size 100 --partitions 4 --durability durable --producers 64 --batch 1 --fsync-delay 10ms
run --records 10000000 --record-size 100 --partitions 64 --reopen
if [ "$(id -u)" = 0 ]; then
  run --records 10000000 --record-size 100 --partitions 64 --reopen --cold
fi
rmdir "$base" 2>/dev/null || true
