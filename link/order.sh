#!/usr/bin/env bash
# Regenerates link/order.ld, the order in which the linker places Brook's functions: first every
# function `brook serve` runs while it starts and sits idle, then every further one it runs
# under load (MQTT QoS 0, 1, 2 and persistent sessions, the native protocol, Kafka produce and
# fetch, the metrics, health and status endpoints), then the rest as the compiler left it. A
# process maps the code it touches in 64 KiB windows (the kernel maps the cached pages around
# each fault), so code that runs together and is placed together keeps the resident set small:
# BENCHMARKS.md, "Code layout". build.rs hands the script to the linker of release-like builds.
#
# The functions are found by running two builds under valgrind's callgrind: the release build
# and the shipped one (the `dist` profile without `bench`, with `quiet`, not stripped), whose
# optimizer keeps other functions apart. Names are v0-mangled (.cargo/config.toml), and their
# crates' hashes, which change with the compiler, the profile and the target, are matched with
# `*`, so one list serves every build and target; names a build does not have are skipped by
# the linker. Run it again after large changes.
#
# Each RUSTC given adds a `dist` build made with that compiler and the default features (as
# `cargo build --profile dist` makes it), profiled the same way: its
# standard library may be named otherwise (Debian's Rust 1.85 ships one with legacy names,
# `_ZN...17h<hash>E`, whose hash is matched with `*` too) and its optimizer keeps other
# functions apart. The list in the repository was made with Debian's Rust 1.85 (.ci/msrv.sh
# unpacks it; it needs LD_LIBRARY_PATH=$BROOK_CACHE/rust-1.85/usr/lib/x86_64-linux-gnu) and
# with both ARM targets in ORDER_TARGETS (about 25 minutes in all on 2 cores).
#
# ORDER_TARGETS (e.g. "aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf") adds the
# `dist` build of each ARM target as cross/build.sh makes it (Zig, Debian's newest Rust; here
# not stripped), run under qemu-user: qemu's log of the code it translates (`-d in_asm`) names the
# functions run. Their compilers inline otherwise than on x86_64 (with the x86_64 list alone,
# 1,292 of the 2,651 functions the aarch64 build runs at start and idle lay outside).
#
# Usage: [ORDER_TARGETS=...] link/order.sh [RUSTC...]
# Needs: valgrind, kcat, curl (apt-get install valgrind kcat curl); for ORDER_TARGETS, what
# cross/install-toolchain.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in valgrind kcat curl python3; do
  command -v "$tool" >/dev/null || { echo "link/order.sh: $tool not found" >&2; exit 1; }
done
cargo build --release --locked --quiet --bin brook
release=$(pwd)/target/release/brook
builds=("release=$release")
# The `dist` build without `bench` and with `quiet`, as cross/build.sh makes it, not stripped.
CARGO_PROFILE_DIST_STRIP=false cargo build --locked --quiet --profile dist \
  --no-default-features --features quiet --bin brook --target-dir target/order
builds+=("dist=$(pwd)/target/order/dist/brook")
n=0
for rustc in "$@"; do
  n=$((n + 1))
  # With the default features, as `cargo build --profile dist` makes it.
  RUSTC=$rustc CARGO_PROFILE_DIST_STRIP=false cargo build --locked --quiet --profile dist \
    --bin brook --target-dir "target/order-$n"
  builds+=("dist-$n=$(pwd)/target/order-$n/dist/brook")
done
for target in ${ORDER_TARGETS:-}; do
  CARGO_PROFILE_DIST_STRIP=false BROOK_CROSS_TARGET_DIR=target/order-cross \
    bash cross/build.sh "$target" >/dev/null
  builds+=("$target=$(pwd)/target/order-cross/$target/dist/brook")
done
work=$(mktemp -d)
spid=
trap '[ -n "$spid" ] && kill "$spid" 2>/dev/null; rm -rf "$work"' EXIT

# Runs BIN serve under callgrind, then the given command with the listeners' addresses in
# $native, $mqtt, $kafka and $http, then stops the server (SIGINT, a clean shutdown).
# An ARM build (its name is its target) runs under qemu, which logs the code it translates.
profile() {
  local bin=$1 phase=$2 target=$3
  shift 3
  local run=(valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/$phase.cg")
  case "$target" in
    aarch64-*) run=(qemu-aarch64 -L /usr/aarch64-linux-gnu -d in_asm -D "$work/$phase.asm") ;;
    armv7-*) run=(qemu-arm -L /usr/arm-linux-gnueabihf -d in_asm -D "$work/$phase.asm") ;;
  esac
  rm -rf "$work/data"
  BROOK_LOG=warn,brook::serve=info "${run[@]}" "$bin" serve --data-dir "$work/data" \
    --native 127.0.0.1:0 --http 127.0.0.1:0 --mqtt 127.0.0.1:0 --kafka 127.0.0.1:0 \
    2> "$work/$phase.log" &
  spid=$!
  for _ in $(seq 600); do grep -q 'kafka=' "$work/$phase.log" && break; sleep 0.1; done
  addr() { grep -o "$1=[0-9.:]*" "$work/$phase.log" | head -n 1 | cut -d= -f2; }
  native=$(addr native) mqtt=$(addr mqtt) kafka=$(addr kafka) http=$(addr http)
  [ -n "$kafka" ] || { cat "$work/$phase.log" >&2; exit 1; }
  "$@"
  kill -INT "$spid"
  wait "$spid" || true
  spid=
  nm --defined-only -S "$bin" > "$work/$phase.nm"
  echo "link/order.sh: $phase profiled"
}

# Idle: timers, the flushers' and the runtime's parking, the housekeeping rounds.
idle() { sleep 12; }
# The load's clients are the release build's `brook bench` (not profiled).
load() {
  "$release" bench mqtt --target "$mqtt" --qos 0 --publishers 2 --messages 4000 >/dev/null
  "$release" bench mqtt --target "$mqtt" --qos 1 --publishers 2 --messages 4000 >/dev/null
  "$release" bench mqtt --target "$mqtt" --qos 2 --publishers 2 --messages 1000 >/dev/null
  "$release" bench mqtt --target "$mqtt" --qos 1 --persistent --publishers 2 --messages 2000 >/dev/null
  "$release" bench native --broker "$native" --records 20000 --producers 2 --consumers 2 >/dev/null
  seq 20000 | kcat -b "$kafka" -P -t kafka-order -X acks=all
  kcat -b "$kafka" -C -t kafka-order -e -q -o beginning >/dev/null
  curl -fsS "http://$http/metrics" "http://$http/healthz" "http://$http/api/status" >/dev/null
  sleep 2
}
names=()
for build in "${builds[@]}"; do
  name=${build%%=*} bin=${build#*=}
  profile "$bin" "$name-start" "$name" idle
  profile "$bin" "$name-load" "$name" load
  names+=("$name")
done

python3 - "$work" "${names[@]}" > link/order.ld <<'PY'
import bisect, re, sys
work, builds = sys.argv[1], sys.argv[2:]
def ran(phase):
    """The functions of the binary that ran in a phase."""
    syms = {}
    for line in open(f"{work}/{phase}.nm"):
        parts = line.split()
        # ADDRESS SIZE TYPE NAME (nm -S; a symbol without a size has no SIZE)
        if len(parts) == 4 and parts[2] in "tTwW":
            syms[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
    seen = set()
    try:
        # callgrind names a function once in full ("fn=(12) name"), then by its number alone.
        names = {}
        for line in open(f"{work}/{phase}.cg"):
            m = re.match(r"^c?fn=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                seen.add(names[m.group(1)])
    except FileNotFoundError:
        # qemu's log: each block of code it translated, its first line "0xADDRESS:  ...".
        # (A Thumb function's address has bit 0 set; ARM code is never at an odd address.)
        starts = sorted((a & ~1, (a & ~1) + max(n, 1), name) for name, (a, n) in syms.items())
        keys = [a for a, _, _ in starts]
        for line in open(f"{work}/{phase}.asm", errors="replace"):
            m = re.match(r"^0x([0-9a-f]+):", line)
            if m:
                pc = int(m.group(1), 16)
                i = bisect.bisect_right(keys, pc) - 1
                if i >= 0 and pc < starts[i][1]:
                    seen.add(starts[i][2])
    return seen & set(syms)
# A v0 name's crate roots carry a hash ("Cs" HASH "_" before the crate name's length).
CRATE = re.compile(r"Cs[0-9A-Za-z]*_(?=[0-9])")
# A legacy name ends in "17h" HASH "E"; LLVM adds ".llvm." NUMBER or "." NUMBER to a local
# function it renames, which changes from build to build.
LEGACY = re.compile(r"17h[0-9a-f]{16}E$")
LOCAL = re.compile(r"(\.llvm)?\.[0-9]+$")
def pattern(name):
    if LOCAL.search(name):
        name = LOCAL.sub("", name) + "*"
    if name.startswith("_R"):
        name = CRATE.sub("Cs*_", name)
    elif name.startswith("_ZN"):
        name = LEGACY.sub("17h*", name.rstrip("*"))
    # `.text*` takes .text.NAME and .text.unlikely.NAME (where LLVM puts the functions it judges
    # cold). A long name is cut to its first 120 characters, which keeps this file small and
    # takes in the few other functions that begin alike.
    return ".text*" + (name if len(name) <= 120 else name[:120] + "*")
start = sorted({pattern(s) for b in builds for s in ran(f"{b}-start")})
load = sorted({pattern(s) for b in builds for s in ran(f"{b}-load")} - set(start))
print("/* Generated by link/order.sh: do not edit. The functions run at start and when idle, then")
print("   those run under load, placed first and together. */")
print("SECTIONS\n{\n  .text.brook_first :\n  {")
for group in (start, load):
    print("    *(")
    for p in group:
        print(f"      {p}")
    print("    )")
print("  }\n}\nINSERT BEFORE .text;")
print(f"link/order.sh: {len(start)} functions at start and idle, {len(load)} more under load",
      file=sys.stderr)
PY
