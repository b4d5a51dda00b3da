#!/usr/bin/env bash
# Checks that the crate (and its tests) build with Rust 1.85, the declared rust-version, and
# that a `dist` build made with it (as `cargo build --profile dist` makes it, linked by GNU ld
# by default) gets link/order.ld's code layout through Debian's `lld` (build.rs finds it), using
# Debian's rustc-web/cargo-web 1.85 unpacked into a private folder ($BROOK_CACHE/rust-1.85), so
# that the machine's own Debian Rust (which cross/install-toolchain.sh keeps at the archive's
# newest version for the ARM builds) is left alone. Needs apt (for the packages and the libraries
# they link against).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${BROOK_CACHE:-$HOME/.cache/brook-ci}
ROOT=$CACHE/rust-1.85
export LD_LIBRARY_PATH=$ROOT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ! "$ROOT/usr/bin/rustc" --version 2>/dev/null | grep -q '^rustc 1\.85\.'; then
  apt-get update -qq || echo "msrv: apt-get update failed; trying the indexes already loaded" >&2
  V=$(apt-cache madison rustc-web | awk '{print $3}' | grep '^1\.85\.' | sort -V | tail -n 1)
  if [ -z "$V" ]; then
    echo "msrv: no rustc-web 1.85 in the Debian archive" >&2
    exit 1
  fi
  # What the four packages link against (their Depends, without the Rust packages themselves).
  apt-get install -y -qq --no-install-recommends libllvm19 libcurl4 libhttp-parser2.9 libpcre3 \
    libsqlite3-0 libssh2-1 libssl3 zlib1g gcc libc6-dev binutils lld >/dev/null
  rm -rf "$ROOT" "$ROOT.debs"
  mkdir -p "$ROOT.debs"
  (cd "$ROOT.debs" && apt-get download -qq \
    "rustc-web=$V" "cargo-web=$V" "libstd-rust-web-dev=$V" "libstd-rust-web-1.85=$V" 2>/dev/null)
  for d in "$ROOT.debs"/*.deb; do dpkg -x "$d" "$ROOT"; done
  rm -rf "$ROOT.debs"
fi
"$ROOT/usr/bin/rustc" --version
RUSTC=$ROOT/usr/bin/rustc RUSTDOC=$ROOT/usr/bin/rustdoc "$ROOT/usr/bin/cargo" check --locked \
  --all-targets --target-dir target/msrv
# The dist build: about 4 min fresh on 2 cores (2026-12-07). Without an `ld.lld` build.rs
# would go without the layout (and say so); link/check-layout.sh fails then.
command -v ld.lld >/dev/null || apt-get install -y -qq --no-install-recommends lld >/dev/null
RUSTC=$ROOT/usr/bin/rustc "$ROOT/usr/bin/cargo" build --locked --quiet --profile dist --bin brook \
  --target-dir target/msrv
bash link/check-layout.sh target/msrv/dist/brook "msrv: the Rust 1.85 dist build"
