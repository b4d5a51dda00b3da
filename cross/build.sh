#!/usr/bin/env bash
# Builds the shipped binary for an ARM target with the `dist` profile (opt-level "s" for
# Brook's code and "z" for its dependencies, fat LTO, one codegen unit, stripped) without the
# benchmarks (`--no-default-features`: `brook bench` is left out) and with debug and trace
# logging compiled out (`--features quiet`), to stay within the size bounds, and prints its size.
#   cross/build.sh aarch64-unknown-linux-gnu      # Jetson, Raspberry Pi 3/4/5 with a 64-bit OS
#   cross/build.sh armv7-unknown-linux-gnueabihf  # Raspberry Pi OS 32-bit
# Output: target/cross/TARGET/dist/brook
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: cross/build.sh TARGET}
# shellcheck source=cross/env.sh
. cross/env.sh
check_target "$target"
# Linked with gold and identical code folding (--icf=all: generic code instantiated for
# different types often compiles to the same machine code, kept once), as a position-dependent
# executable (relocation-model=static: no dynamic relocation table, direct addressing). Together
# they save about 130 KB on armv7; the price is that the executable's own code is not placed
# at a random address (heap, stack and libraries still are). Drop the last flag for a PIE.
# On armv7, Rust code is compiled to Thumb-2, as Debian builds all of armhf: a quarter smaller
# than A32 (5.27 -> 4.01 MB on 2026-12-05, when the A32 build had grown past its 5 MiB bound);
# rustc warns that the target feature is not stable. Its speed on a board is not measured yet.
triple_env=$(echo "$target" | tr 'a-z-' 'A-Z_')
flags="-C link-arg=-fuse-ld=gold -C link-arg=-Wl,--icf=all -C relocation-model=static"
case "$target" in
  armv7-*) flags="$flags -C target-feature=+thumb-mode" ;;
esac
export "CARGO_TARGET_${triple_env}_RUSTFLAGS=$flags"
"$CARGO" build --locked --profile dist --no-default-features --features quiet --target "$target" --target-dir target/cross --bin brook
bin=target/cross/$target/dist/brook
bytes=$(stat -c %s "$bin")
echo "$target: $bin is $bytes bytes ($(awk "BEGIN { printf \"%.2f\", $bytes / 1048576 }") MiB)"
