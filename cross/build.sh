#!/usr/bin/env bash
# Builds the shipped binary for an ARM target with the `dist` profile (opt-level "s", fat LTO,
# one codegen unit, stripped) without the benchmarks (`--no-default-features`: `brook bench`
# is left out to stay small) and prints its size.
#   cross/build.sh aarch64-unknown-linux-gnu      # Jetson, Raspberry Pi 3/4/5 with a 64-bit OS
#   cross/build.sh armv7-unknown-linux-gnueabihf  # Raspberry Pi OS 32-bit
# Output: target/cross/TARGET/dist/brook
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: cross/build.sh TARGET}
# shellcheck source=cross/env.sh
. cross/env.sh
check_target "$target"
"$CARGO" build --locked --profile dist --no-default-features --target "$target" --target-dir target/cross --bin brook
bin=target/cross/$target/dist/brook
bytes=$(stat -c %s "$bin")
echo "$target: $bin is $bytes bytes ($(awk "BEGIN { printf \"%.2f\", $bytes / 1048576 }") MiB)"
