#!/usr/bin/env bash
# Runs the test suite for an ARM target under qemu-user (no binfmt_misc needed: cargo runs each
# test binary through the runner from cross/env.sh, and tests that start the `brook` binary or
# themselves go through BROOK_TEST_RUNNER).
#   cross/test.sh aarch64-unknown-linux-gnu           # every test
#   cross/test.sh armv7-unknown-linux-gnueabihf --lib # the unit tests only
# Extra arguments go to `cargo test`. Emulated code runs 20-50x slower than native: timing is
# not measured here (benchmarks do that natively), only behaviour.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: cross/test.sh TARGET [cargo test args]}
shift
# shellcheck source=cross/env.sh
. cross/env.sh
check_target "$target"
# MQTT peers (mosquitto clients, paho-mqtt) run natively; only Brook is emulated.
# shellcheck source=tests/peers.sh
. tests/peers.sh
# Built with opt-level 1 (and line tables only, for backtraces): emulated Brook then runs several
# times faster (under qemu-aarch64 the tests ran 206 s instead of about 1,110 s; tests/it/mirror.rs
# 58 s instead of 488 s) for about 260 s more build. Debug assertions and overflow checks stay on.
export CARGO_PROFILE_DEV_OPT_LEVEL=${CARGO_PROFILE_DEV_OPT_LEVEL:-1}
export CARGO_PROFILE_DEV_DEBUG=${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}
BROOK_TEST_RUNNER=$(runner_for "$target")
export BROOK_TEST_RUNNER
"$CARGO" test --locked --target "$target" --target-dir target/cross "$@"
