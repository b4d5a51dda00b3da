#!/usr/bin/env bash
# Makes the README's screenshot of the status page (docs/status-page.png), in about 3.5 min:
# a local Brook with traffic on three topics, two groups behind, an MQTT client, and a mirror
# whose upstream (another Brook) is killed part-way. Needs a built brook (BROOK, default
# target/debug/brook), python3, mosquitto_sub and chromium-headless-shell; uses the ports
# 17420, 17421, 17520 and 17883 on loopback.
set -u
cd "$(dirname "$0")/.."
B=${BROOK:-$PWD/target/debug/brook}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
cat > $D/local.toml <<EOT
data_dir = "$D/local"
[listeners]
native = "127.0.0.1:17420"
http = "127.0.0.1:17421"
mqtt = "127.0.0.1:17883"
kafka = ""
[log]
max_size = "2GiB"
min_free = "1GiB"
[[mirror]]
name = "cloud"
kind = "brook"
upstream = ["127.0.0.1:17520"]
topics = ["telemetry", "alarms"]
node = "gw1"
backoff_max = "2s"
EOT
$B serve --data-dir $D/up --native 127.0.0.1:17520 --http "" --mqtt "" --kafka "" > $D/up.log 2>&1 &
UP=$!
$B serve --config $D/local.toml > $D/local.log 2>&1 &
LOCAL=$!
sleep 2
export BROOK_BROKER=127.0.0.1:17420
$B topics create telemetry --partitions 3 --retention-size 512MiB
$B topics create alarms --on-full reject
$B topics create logs --retention 2d
mosquitto_sub -p 17883 -i hmi-panel -c -q 1 -t 'plant/#' > /dev/null &
SUB=$!
python3 - 2>/dev/null <<'PY' | $B produce --topic telemetry &
import math, sys, time
t0 = time.time()
i = 0
while time.time() - t0 < 200:
    t = time.time() - t0
    rate = 300 + 200 * math.sin(t / 20)
    for _ in range(int(rate / 10)):
        print(f'{{"sensor":"flow-{i%12}","seq":{i},"value":{12.5 + math.sin(i/50):.3f}}}')
        i += 1
    sys.stdout.flush()
    time.sleep(0.1)
PY
PROD=$!
(for i in $(seq 1 200); do echo "alarm $i"; sleep 1; done) | $B produce --topic alarms &
ALARMS=$!
(for i in $(seq 1 400); do echo "log line $i"; sleep 0.5; done) | $B produce --topic logs &
LOGS=$!
sleep 20
$B consume --topic telemetry --group reports --count 4000 > /dev/null
$B consume --topic alarms --group alerting --count 10 > /dev/null
sleep 70
kill -9 $UP
sleep 100
chromium-headless-shell --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir=$D/profile --virtual-time-budget=4000 --window-size=1200,1060 --screenshot=$PWD/docs/status-page.png http://127.0.0.1:17421/ 2>/dev/null
kill $PROD $ALARMS $LOGS $SUB $LOCAL 2>/dev/null
wait $LOCAL
echo "docs/status-page.png written"
