#!/usr/bin/env bash
# Installs what the tests need and runs them all: formatting, lints, unit, property, crash,
# model and integration tests (real files, the real `brook` binary).
#
#   tests/run.sh            # everything
#   tests/run.sh -- NAME    # only tests whose name contains NAME (passed to cargo test)
#
# Needs: a Rust toolchain (rustup's, or Debian's cargo-web/rustc-web >= 1.85, installed here
# when none is found and we are root), the MQTT peers (Debian's mosquitto and mosquitto-clients,
# installed here when missing and we are root) and python3 (paho-mqtt goes into a venv under
# ${BROOK_CACHE:-~/.cache/brook-ci}, reused when present). The rest comes from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "installing Debian's Rust toolchain (no cargo found)"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends cargo-web rustc-web gcc libc6-dev >/dev/null
  else
    echo "tests/run.sh: cargo not found; install Rust 1.85 or newer (https://rustup.rs or Debian's cargo-web)" >&2
    exit 1
  fi
fi

# MQTT peers: mosquitto, mosquitto-clients, paho-mqtt (sets BROOK_TEST_PYTHON).
# shellcheck source=tests/peers.sh
. tests/peers.sh

filter=()
if [ "${1:-}" = "--" ]; then shift; filter=("$@"); fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "cargo doc (broken doc links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --quiet

step "fuzz target compiles (cargo check fuzz/)"
cargo check --locked --quiet --manifest-path fuzz/Cargo.toml

step "protocol messages compile without std (tests/no_std_proto)"
cargo check --locked --quiet --manifest-path tests/no_std_proto/Cargo.toml

step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --all-targets "${filter[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\n%d passed, %d failed\n", p, f }' "$log"
exit "$status"
