#!/usr/bin/env bash
# Builds Brook's Debian package for one architecture from an already built binary:
#   packaging/build-deb.sh ARCH BINARY [HOST_BINARY]
#   ARCH: amd64, arm64 or armhf; BINARY: the brook executable for it (e.g. from cross/build.sh);
#   HOST_BINARY: a brook this machine runs, for the default config and the man page (default:
#   BINARY itself, so give one when packaging for another architecture).
# Output: target/deb/brook_VERSION_ARCH.deb. Contents: /usr/bin/brook, the systemd unit,
# /etc/brook/brook.toml (a conffile: the commented defaults, data in /var/lib/brook), the board
# profiles under /usr/share/brook/boards/, a man page made from `brook --help`, and maintainer
# scripts that make the brook user and /var/lib/brook (purge removes them).
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:?usage: packaging/build-deb.sh ARCH BINARY [HOST_BINARY]}
bin=${2:?usage: packaging/build-deb.sh ARCH BINARY [HOST_BINARY]}
host=${3:-$bin}
case "$arch" in
  amd64 | arm64 | armhf) ;;
  *) echo "unknown architecture $arch (amd64, arm64 or armhf)" >&2; exit 2 ;;
esac
version=$(awk -F'"' '/^version *=/ {print $2; exit}' Cargo.toml)-1
stage=target/deb/stage-$arch
rm -rf "$stage"
install -D -m 0755 "$bin" "$stage/usr/bin/brook"
install -D -m 0644 packaging/debian/brook.service "$stage/lib/systemd/system/brook.service"
install -d -m 0755 "$stage/etc/brook"
"$host" config default | sed 's|^data_dir = .*|data_dir = "/var/lib/brook"|' > "$stage/etc/brook/brook.toml"
chmod 0644 "$stage/etc/brook/brook.toml"
grep -q '^data_dir = "/var/lib/brook"$' "$stage/etc/brook/brook.toml"
for board in boards/*/; do
  name=$(basename "$board")
  install -D -m 0644 "$board/brook.toml" "$stage/usr/share/brook/boards/$name/brook.toml"
  install -D -m 0644 "$board/brook.service" "$stage/usr/share/brook/boards/$name/brook.service"
done
install -D -m 0644 boards/README.md "$stage/usr/share/brook/boards/README.md"
doc=$stage/usr/share/doc/brook
install -D -m 0644 packaging/debian/copyright "$doc/copyright"
install -D -m 0644 packaging/debian/lintian-overrides "$stage/usr/share/lintian/overrides/brook"
printf 'brook (%s) unstable; urgency=medium\n\n  * Packaged from the Brook repository (packaging/build-deb.sh).\n\n -- Brook developers <brook@example.invalid>  %s\n' \
  "$version" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" |
  gzip -9n > "$doc/changelog.Debian.gz"
chmod 0644 "$doc/changelog.Debian.gz"
# The man page: every command's --help, as groff.
man=$stage/usr/share/man/man1
install -d -m 0755 "$man"
{
  printf '.TH BROOK 1 "" "brook %s" "User Commands"\n.SH NAME\nbrook \\- streaming broker for edge and IoT devices\n' "${version%-1}"
  printf '.SH SYNOPSIS\n.B brook\n\\fICOMMAND\\fR [\\fIOPTIONS\\fR]\n.SH DESCRIPTION\n'
  section() { printf '.SS "%s"\n.nf\n' "$1"; sed -e 's/\\/\\e/g' -e 's/^\./\\\&./' -e "s/^'/\\\\\\&'/"; printf '.fi\n'; }
  "$host" --help | section "brook"
  for cmd in $("$host" --help | awk '/^Commands:/ {on = 1; next} on && /^  [a-z]/ {print $1} on && /^$/ {exit}'); do
    [ "$cmd" = help ] && continue
    "$host" "$cmd" --help | section "brook $cmd"
  done
  printf '.SH FILES\n/etc/brook/brook.toml, /var/lib/brook, /usr/share/brook/boards/\n'
} | gzip -9n > "$man/brook.1.gz"
chmod 0644 "$man/brook.1.gz"
# Dependencies: the newest glibc symbol version the binary uses, and libgcc's unwinder.
glibc=$(readelf --dyn-syms -W "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)
depends="libc6 (>= ${glibc:-2.17})"
if readelf -d "$bin" | grep -q 'libgcc_s'; then
  depends="$depends, libgcc-s1 | libgcc1"
fi
install -d -m 0755 "$stage/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@DEPENDS@/$depends/" \
  packaging/debian/control.in > "$stage/DEBIAN/control"
echo /etc/brook/brook.toml > "$stage/DEBIAN/conffiles"
for s in postinst prerm postrm; do
  install -m 0755 "packaging/debian/$s" "$stage/DEBIAN/$s"
done
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | sort | xargs md5sum) > "$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums" "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles"
out=target/deb/brook_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$out" >/dev/null
echo "$out: $(stat -c %s "$out") bytes; Depends: $depends"
