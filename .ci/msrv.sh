#!/usr/bin/env bash
# Checks that the crate (and its tests) build with Rust 1.85, the declared rust-version, using
# Debian's rustc-web/cargo-web 1.85 (installed here when missing; needs root and apt).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! /usr/bin/rustc --version 2>/dev/null | grep -q '^rustc 1\.85\.'; then
  apt-get update -qq
  V=$(apt-cache madison rustc-web | awk '{print $3}' | grep '^1\.85\.' | sort -V | tail -n 1)
  if [ -z "$V" ]; then
    echo "msrv: no rustc-web 1.85 in the Debian archive" >&2
    exit 1
  fi
  apt-get install -y -qq --no-install-recommends \
    "rustc-web=$V" "cargo-web=$V" "libstd-rust-web-dev=$V" "libstd-rust-web-1.85=$V" >/dev/null
fi
/usr/bin/rustc --version
RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc /usr/bin/cargo check --locked --all-targets \
  --target-dir target/msrv
