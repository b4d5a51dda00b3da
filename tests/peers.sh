# Sourced by tests/run.sh and cross/test.sh: makes sure the real peers the tests talk to are
# here, installing what is missing, and exports BROOK_TEST_PYTHON.
#   - Debian's mosquitto (the broker the MQTT benchmark compares with) and mosquitto-clients
#     (mosquitto_pub / mosquitto_sub), installed with apt-get when missing and we are root;
#   - Debian's kcat (a librdkafka Kafka client), installed with apt-get when missing;
#   - Debian's socat (with OpenSSL): TLS in front of tansu, which has none of its own;
#   - systemd's systemd-analyze, which verifies the units (systemd need not be running);
#   - Debian's chromium-headless-shell (headless Chromium), which opens the status page;
#   - paho-mqtt 2.2.0, confluent-kafka 2.16.1 and kafka-python 3.0.12 in a venv under
#     ${BROOK_CACHE:-~/.cache/brook-ci}, reused when present;
#   - tansu 0.6.0 (a Kafka-API broker: the mirror's Kafka upstream), built with cargo install
#     into the same cache (about 9 minutes on 2 cores, once), exported as BROOK_TANSU.
# A peer that cannot be installed stops the run here; the tests themselves also fail (never
# skip) without it.

peer_step() { printf '\n==> %s\n' "$*"; }

if ! command -v mosquitto_pub >/dev/null 2>&1 || ! command -v mosquitto >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    peer_step "installing mosquitto and mosquitto-clients (MQTT peers for the tests and benchmarks)"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients >/dev/null
    # The package starts a system broker on 1883; the tests start their own on other ports.
    systemctl disable --now mosquitto >/dev/null 2>&1 || true
  else
    echo "brook tests: mosquitto_pub not found; apt-get install mosquitto mosquitto-clients" >&2
    exit 1
  fi
fi

# tool:package
for tool in kcat:kcat socat:socat openssl:openssl systemd-analyze:systemd \
  chromium-headless-shell:chromium-headless-shell; do
  package=${tool#*:} tool=${tool%%:*}
  if ! command -v "$tool" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      peer_step "installing $package (kcat: Kafka client; socat: TLS in front of tansu; openssl: the README's certificate recipe; systemd: systemd-analyze verify of the units; chromium-headless-shell: the status page in a browser)"
      apt-get update -qq || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null
    else
      echo "brook tests: $tool not found; apt-get install $package" >&2
      exit 1
    fi
  fi
done

cache="${BROOK_CACHE:-$HOME/.cache/brook-ci}"
venv="$cache/venv"
if ! "$venv/bin/python" -c 'import paho.mqtt.client, confluent_kafka, kafka' >/dev/null 2>&1; then
  peer_step "python venv with paho-mqtt, confluent-kafka and kafka-python in $venv"
  mkdir -p "$cache"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian's own python3 needs python3-venv for this.
    [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "paho-mqtt==2.2.0" \
    "confluent-kafka==2.16.1" "kafka-python==3.0.12"
fi
export BROOK_TEST_PYTHON="$venv/bin/python"

tansu_bin="$cache/tansu/bin/tansu"
if [ ! -x "$tansu_bin" ]; then
  peer_step "building tansu 0.6.0 into $cache/tansu (Kafka upstream for the mirror tests; 13-20+ min on 2 cores, once)"
  cargo install tansu --locked --version 0.6.0 --features libsql --root "$cache/tansu" --quiet
fi
export BROOK_TANSU="$tansu_bin"
