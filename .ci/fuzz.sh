#!/usr/bin/env bash
# Fuzzes every target in fuzz/ for a bounded time (FUZZ_SECONDS each, default 45), seeded with
# its regressions (fuzz/regressions/<target>/). libFuzzer without a sanitizer, on the stable
# toolchain (RUSTC_BOOTSTRAP=1, as fuzz/README.md says). cargo-fuzz is installed into the cache
# folder ($BROOK_CACHE, default ~/.cache/brook-ci) once. A crash fails the step and leaves its
# input in fuzz/artifacts/<target>/; copy it into fuzz/regressions/<target>/ with the fix.
# Cost (2 cores, 2026-12-06): cargo-fuzz install 40 s once, the build of all targets about
# 3 min, then FUZZ_SECONDS per target.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${BROOK_CACHE:-$HOME/.cache/brook-ci}"
seconds="${FUZZ_SECONDS:-45}"
if [ ! -x "$cache/cargo-fuzz/bin/cargo-fuzz" ]; then
  cargo install cargo-fuzz --locked --quiet --version 0.13.2 --root "$cache/cargo-fuzz"
fi
export PATH="$cache/cargo-fuzz/bin:$PATH" RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$cache/fuzz-target}"
cargo fuzz build -s none
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in $(cargo fuzz list); do
  mkdir -p "$work/$target"
  cp fuzz/regressions/"$target"/* "$work/$target/" 2>/dev/null || true
  echo "fuzzing $target for ${seconds} s"
  # Any failure fails the step: a crash (its input is left in fuzz/artifacts/<target>/), or a
  # target that does not build or run.
  if ! cargo fuzz run -s none "$target" "$work/$target" -- -max_total_time="$seconds" \
    -print_final_stats=1 > "$work/$target.log" 2>&1; then
    tail -n 40 "$work/$target.log" >&2
    echo "fuzz target $target failed; a crashing input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)' "$work/$target.log" || true
done
