#!/usr/bin/env bash
# Installs what cross/build.sh and cross/test.sh need on an x86_64 Debian 12 machine, without
# Docker: Debian's Rust (rustc-web/cargo-web) with its standard library for arm64 and armhf, the
# cross C toolchains (for crates with C parts and the test builds), qemu-user, and for the
# shipped binaries Zig (the `ziglang` package from PyPI, in a venv) with cargo-zigbuild (from
# crates.io), which link against glibc 2.27, both under ${BROOK_CACHE:-~/.cache/brook-ci}.
# Needs root. Idempotent.
#
# The Rust version is resolved here, not hard-coded: the newest rustc-web version that the
# archive offers for amd64, arm64 and armhf alike (the compiler and the target std must match).
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "cross/install-toolchain.sh: run as root (it uses dpkg and apt-get)" >&2
  exit 1
fi

have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

dpkg --add-architecture arm64
dpkg --add-architecture armhf
versions() { apt-cache madison "rustc-web:$1" 2>/dev/null | awk '{print $3}' | sort -u; }
common_version() {
  comm -12 <(versions amd64) <(versions arm64) | comm -12 - <(versions armhf) | sort -V | tail -n 1
}
# A mirror caught mid-sync fails an index now and then (Debian's security mirror, which carries
# rustc-web, more than once): if the indexes that did load already name a common rustc-web, go
# on with them; otherwise retry for up to about three and a half minutes.
for try in 1 2 3 4 5 6; do
  if apt-get update -qq; then break; fi
  if [ -n "$(common_version)" ]; then
    echo "apt-get update failed (try $try); the loaded indexes have rustc-web, going on" >&2
    break
  fi
  echo "apt-get update failed (try $try); retrying" >&2
  sleep $((try * 10))
done

V=$(common_version)
if [ -z "$V" ]; then
  echo "cross/install-toolchain.sh: no rustc-web version is available for amd64, arm64 and armhf alike" >&2
  exit 1
fi
MINOR=$(echo "$V" | sed -E 's/^([0-9]+\.[0-9]+).*/\1/')
echo "Debian Rust toolchain: rustc-web $V"

apt-get install -y -qq --no-install-recommends \
  "rustc-web=$V" "cargo-web=$V" "libstd-rust-web-dev=$V" "libstd-rust-web-$MINOR=$V" \
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross \
  qemu-user >/dev/null

# The target std rlibs are plain files; installing the :arm64/:armhf packages through apt
# conflicts with the host's multiarch libraries, so unpack them instead, and again whenever the
# compiler's version changes (a std left from another version fails every cross build with E0514).
for arch in arm64 armhf; do
  triple=$([ "$arch" = arm64 ] && echo aarch64-unknown-linux-gnu || echo armv7-unknown-linux-gnueabihf)
  stamp=/usr/lib/rustlib/$triple/brook-unpacked-version
  if [ "$(cat "$stamp" 2>/dev/null)" = "$V" ]; then
    continue
  fi
  rm -rf "/usr/lib/rustlib/$triple"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq "libstd-rust-web-dev:$arch=$V" "libstd-rust-web-$MINOR:$arch=$V")
  for d in "$tmp"/*.deb; do dpkg -x "$d" /; done
  rm -rf "$tmp"
  echo "$V" >"$stamp"
done
/usr/bin/rustc --version
ls /usr/lib/rustlib/

# Zig and cargo-zigbuild (cross/env.sh puts them on PATH): pinned, reused when present.
cache="${BROOK_CACHE:-$HOME/.cache/brook-ci}"
if ! "$cache/zig/bin/python" -m ziglang version 2>/dev/null | grep -qx 0.17.1; then
  python3 -m venv "$cache/zig" >/dev/null 2>&1 ||
    { apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$cache/zig"; }
  "$cache/zig/bin/pip" install -q --disable-pip-version-check "ziglang==0.17.1"
fi
if ! "$cache/zigbuild/bin/cargo-zigbuild" --version 2>/dev/null | grep -q ' 0.24.1$'; then
  /usr/bin/cargo install --locked --quiet cargo-zigbuild --version 0.24.1 --root "$cache/zigbuild"
fi
"$cache/zigbuild/bin/cargo-zigbuild" --version
