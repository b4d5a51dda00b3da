#!/usr/bin/env bash
# Builds the shipped binary for a target with the `dist` profile (opt-level "s" for Brook's
# code and "z" for its dependencies, fat LTO, one codegen unit, stripped) without the
# benchmarks (`--no-default-features`: `brook bench` is left out) and with debug and trace
# logging compiled out (`--features quiet`), to stay within the size bounds, and prints its size
# and the newest glibc symbol version it needs.
#   cross/build.sh aarch64-unknown-linux-gnu      # Jetson, Raspberry Pi 3/4/5 with a 64-bit OS
#   cross/build.sh armv7-unknown-linux-gnueabihf  # Raspberry Pi OS 32-bit
#   cross/build.sh x86_64-unknown-linux-gnu       # the amd64 package
# Output: target/cross/TARGET/dist/brook (BROOK_CROSS_TARGET_DIR instead of target/cross:
# link/order.sh builds there, with CARGO_PROFILE_DIST_STRIP=false, the build it profiles)
#
# Linked by Zig (cargo-zigbuild) against glibc 2.27, so the binaries start on JetPack 4
# (Ubuntu 18.04), Pi OS Buster and everything newer (the Debian 12 cross toolchain's glibc made
# them need 2.34). Zig's linker takes no --icf=all, which gold gave the ARM builds before
# (about 130 KB on armv7).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: cross/build.sh TARGET}
# shellcheck source=cross/env.sh
. cross/env.sh
check_target "$target" build
# The ARM builds are position-dependent executables (relocation-model=static: no dynamic
# relocation table, direct addressing), which keeps them within their size bounds; their own
# code is then not placed at a random address (heap, stack and libraries still are). On armv7,
# Rust code is compiled to Thumb-2, as Debian builds all of armhf: a quarter smaller than A32
# (5.27 -> 4.01 MB on 2026-12-05); rustc warns that the target feature is not stable.
triple_env=$(echo "$target" | tr 'a-z-' 'A-Z_')
case "$target" in
  aarch64-*) flags="-C relocation-model=static" ;;
  armv7-*) flags="-C relocation-model=static -C target-feature=+thumb-mode" ;;
  *) flags="" ;;
esac
export "CARGO_TARGET_${triple_env}_RUSTFLAGS=$flags"
# cargo-zigbuild is the linker here, not the cross gcc cross/env.sh names for the test builds.
unset "CARGO_TARGET_${triple_env}_LINKER"
dir=${BROOK_CROSS_TARGET_DIR:-target/cross}
"$CARGO" zigbuild --locked --profile dist --no-default-features --features quiet --target "$target.2.27" --target-dir "$dir" --bin brook
bin=$dir/$target/dist/brook
bytes=$(stat -c %s "$bin")
glibc=$(readelf --dyn-syms -W "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
echo "$target: $bin is $bytes bytes ($(awk "BEGIN { printf \"%.2f\", $bytes / 1048576 }") MiB), needs ${glibc:-no glibc}"
bash link/check-layout.sh "$bin" "$target"
