#!/usr/bin/env bash
# Checks that link/order.ld's code layout is in force in a built binary: the functions it lists
# (those run at start, when idle and under load) sit together in their own section at the
# front (1.5-1.8 MB on x86_64 on 2026-12-07). If the script was not applied (no LLD linked),
# or its names no longer matched (v0 names lost, or the list far out of date: link/order.sh
# remakes it), the section is missing or holds next to nothing.
#   link/check-layout.sh BINARY LABEL
set -euo pipefail
bin=${1:?usage: link/check-layout.sh BINARY LABEL} label=${2:?usage: link/check-layout.sh BINARY LABEL}
hex=$(readelf -SW "$bin" | sed 's/^ *\[ *[0-9]*\] *//' | awk '$1 == ".text.brook_first" {print $5}')
first=$((16#${hex:-0}))
linker=$(readelf -p .comment "$bin" | sed -n 's/.*Linker: //p' | head -n 1)
echo "$label: the code run at start, idle and under load: $first bytes at the front" \
  "(link/order.ld), linked by ${linker:-GNU ld}"
if [ "$first" -lt $((512 * 1024)) ]; then
  echo "$label: under 512 KiB: link/order.ld not applied (no LLD) or out of date (run link/order.sh)" >&2
  exit 1
fi
