#!/usr/bin/env bash
# Installs the amd64 package on this machine (root) and uses it as a user would: apt-get
# install, the service started (by systemd where it runs, else the unit's ExecStart as the
# brook user with the unit's environment and working directory), a record produced and
# consumed, a reload (SIGHUP), then remove (the data stays) and purge (everything goes).
# The ARM packages are checked with dpkg-deb and their binaries run under qemu-user.
#   .ci/deb-test.sh   (after packaging/build-deb.sh for amd64, arm64 and armhf)
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "deb-test: $*" >&2; exit 1; }
deb=$(ls target/deb/brook_*_amd64.deb)
unit=packaging/debian/brook.service

# ARM packages: what they hold, for which architecture, needing which glibc.
for arch in arm64 armhf; do
  pkg=$(ls target/deb/brook_*_"$arch".deb)
  [ "$(dpkg-deb -f "$pkg" Architecture)" = "$arch" ] || fail "$pkg: architecture"
  depends=$(dpkg-deb -f "$pkg" Depends)
  echo "$pkg: Depends: $depends"
  case "$depends" in "libc6 (>= 2."*) ;; *) fail "$pkg: no libc6 dependency" ;; esac
  contents=$(dpkg-deb -c "$pkg")
  for f in ./usr/bin/brook ./lib/systemd/system/brook.service ./etc/brook/brook.toml \
    ./usr/share/brook/boards/pi4/brook.toml ./usr/share/man/man1/brook.1.gz ./usr/share/doc/brook/copyright; do
    grep -q " $f\$" <<<"$contents" || fail "$pkg lacks $f"
  done
  x=$(mktemp -d)
  dpkg-deb -x "$pkg" "$x"
  case "$arch" in
    arm64) run="qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    armhf) run="qemu-arm -L /usr/arm-linux-gnueabihf" ;;
  esac
  $run "$x/usr/bin/brook" --version | grep -q '^brook ' || fail "$pkg: brook --version under qemu"
  rm -rf "$x"
done

# amd64: a clean slate, then the package as apt installs it.
if dpkg -s brook >/dev/null 2>&1; then
  apt-get purge -y brook >/dev/null
fi
apt-get install -y "./$deb" >/dev/null
getent passwd brook >/dev/null || fail "no brook user"
[ "$(stat -c %U:%a /var/lib/brook)" = brook:750 ] || fail "/var/lib/brook: $(stat -c %U:%a /var/lib/brook)"
grep -q '^data_dir = "/var/lib/brook"$' /etc/brook/brook.toml || fail "config data_dir"
brook --version
brook config check /etc/brook/brook.toml

log=$(mktemp)
if [ -d /run/systemd/system ]; then
  # The package's postinst started it (deb-systemd-invoke).
  systemctl is-active --quiet brook || systemctl start brook || true
  for _ in $(seq 100); do
    [ "$(systemctl show -p MainPID --value brook)" != 0 ] && break
    sleep 0.2
  done
  pid=$(systemctl show -p MainPID --value brook)
else
  # The unit's ExecStart, user, working directory and environment.
  exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
  user=$(sed -n 's/^User=//p' "$unit")
  dir=$(sed -n 's/^WorkingDirectory=//p' "$unit")
  mapfile -t envs < <(sed -n 's/^Environment=//p' "$unit")
  # setpriv execs Brook itself as the user (runuser would stay as its root parent).
  # shellcheck disable=SC2086 # ExecStart is a command line
  (cd "$dir" && exec setpriv --reuid="$user" --regid="$user" --init-groups -- env "${envs[@]}" $exec_start) >"$log" 2>&1 &
  pid=$!
fi
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fs 127.0.0.1:7421/healthz >/dev/null 2>&1 && break
  sleep 0.2
done
if [ -d /run/systemd/system ]; then
  curl -fs 127.0.0.1:7421/healthz | grep -q ok ||
    fail "not healthy: $(systemctl status brook --no-pager 2>&1 | tail -n 30)"
else
  curl -fs 127.0.0.1:7421/healthz | grep -q ok || fail "not healthy: $(cat "$log")"
fi
[ "$(stat -c %U /proc/"$pid")" = brook ] || fail "the service does not run as brook"
brook topics create deb-test
echo "from the package" | brook produce --topic deb-test
got=$(brook consume --topic deb-test --from earliest --count 1)
grep -q "from the package" <<<"$got" || fail "consumed: $got"
[ -n "$(find /var/lib/brook -path '*deb-test*' -print -quit)" ] || fail "no data under /var/lib/brook"
if [ -d /run/systemd/system ]; then
  systemctl reload brook || fail "systemctl reload: $(systemctl status brook --no-pager 2>&1 | tail -n 20)"
else
  kill -HUP "$pid"
fi
for _ in $(seq 50); do
  if [ -d /run/systemd/system ]; then
    journalctl -u brook --since "-1min" | grep -q "re-read" && break
  else
    grep -q "re-read" "$log" && break
  fi
  sleep 0.2
done
kill -0 "$pid" || fail "gone after SIGHUP"
curl -fs 127.0.0.1:7421/healthz | grep -q ok || fail "not healthy after the reload"
if [ ! -d /run/systemd/system ]; then
  grep -q "re-read" "$log" || fail "no reload logged: $(cat "$log")"
  kill -TERM "$pid"
  wait "$pid" || fail "exit status $? after SIGTERM"
fi
trap - EXIT

apt-get remove -y brook >/dev/null
[ ! -e /usr/bin/brook ] || fail "remove left /usr/bin/brook"
[ -d /var/lib/brook ] && [ -f /etc/brook/brook.toml ] || fail "remove took the data or the config"
apt-get purge -y brook >/dev/null
[ ! -e /var/lib/brook ] && [ ! -e /etc/brook ] || fail "purge left /var/lib/brook or /etc/brook"
! getent passwd brook >/dev/null || fail "purge left the brook user"
echo "deb-test: ok"
