# Sourced by cross/build.sh and cross/test.sh: Debian's Rust (rustc-web, the archive's newest version
# for amd64, arm64 and armhf alike: 1.96 in December 2026; cross/install-toolchain.sh)
# with the ARM linkers, C compilers for crates with C parts, and qemu-user as the test runner.
# shellcheck shell=bash
export RUSTC=/usr/bin/rustc
export RUSTDOC=/usr/bin/rustdoc
CARGO=/usr/bin/cargo
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm -L /usr/arm-linux-gnueabihf"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc

# Zig and cargo-zigbuild for the shipped binaries (cross/install-toolchain.sh puts them there).
BROOK_CACHE=${BROOK_CACHE:-$HOME/.cache/brook-ci}
export PATH="$BROOK_CACHE/zig/bin:$BROOK_CACHE/zigbuild/bin:$PATH"

check_target() {
  case "$1" in
    aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf) ;;
    x86_64-unknown-linux-gnu) [ "${2:-}" = build ] && return 0 ;&
    *)
      echo "unsupported target $1 (aarch64-unknown-linux-gnu or armv7-unknown-linux-gnueabihf; x86_64-unknown-linux-gnu for cross/build.sh)" >&2
      exit 2
      ;;
  esac
  if [ ! -x "$RUSTC" ] || [ ! -d "/usr/lib/rustlib/$1" ]; then
    echo "the cross toolchain is missing: run cross/install-toolchain.sh (as root) first" >&2
    exit 1
  fi
}

# The runner for a target, as a command prefix (for tests that start the brook binary).
runner_for() {
  case "$1" in
    aarch64-unknown-linux-gnu) echo "$CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER" ;;
    armv7-unknown-linux-gnueabihf) echo "$CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER" ;;
  esac
}
