#!/usr/bin/env bash
# The three Debian packages from the shipped binaries (cross/build.sh for each target), each checked by lintian (no error or warning may remain; the one
# tag the package overrides is explained in packaging/debian/lintian-overrides), then
# .ci/deb-test.sh installs, uses, removes and purges the amd64 one.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in lintian curl; do
  if ! command -v "$tool" >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
  fi
done
rm -rf target/deb
host=target/cross/x86_64-unknown-linux-gnu/dist/brook
bash packaging/build-deb.sh amd64 "$host"
bash packaging/build-deb.sh arm64 target/cross/aarch64-unknown-linux-gnu/dist/brook "$host"
bash packaging/build-deb.sh armhf target/cross/armv7-unknown-linux-gnueabihf/dist/brook "$host"
for deb in target/deb/*.deb; do
  tags=$(lintian --tag-display-limit 0 "$deb" 2>&1 | grep -E '^[EW]: ' || true)
  if [ -n "$tags" ]; then
    echo "lintian $deb:" >&2
    echo "$tags" >&2
    exit 1
  fi
  echo "lintian $deb: clean"
done
rm -rf target/deb/stage-*
bash .ci/deb-test.sh
