#!/usr/bin/env bash
# What durable metadata costs: offset commits and topic creates per second, each acknowledged
# only once on stable storage, through the Kafka API with kafka-python, against a fresh
# `brook serve` per run. Give two binaries to compare them in one session (runs alternate, so
# the machine's mood hits both alike), e.g. a build from before a change and one after it.
# Usage: benches/meta.sh [BROOK_A [BROOK_B]] [-- COMMITS CREATES REPEAT]
# Needs: the test venv's python with kafka-python (tests/peers.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
bins=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do bins+=("$(realpath "$1")"); shift; done
[ "${1:-}" = "--" ] && shift
commits=${1:-2000}
creates=${2:-200}
repeat=${3:-3}
if [ ${#bins[@]} -eq 0 ]; then
  cargo build --release --locked --quiet
  bins=("$(pwd)/target/release/brook")
fi
python=${BROOK_TEST_PYTHON:-${BROOK_CACHE:-$HOME/.cache/brook-ci}/venv/bin/python}
"$python" -c 'import kafka' 2>/dev/null || { echo "kafka-python missing: run tests/peers.sh" >&2; exit 1; }
work=$(mktemp -d)
spid=
trap '[ -n "$spid" ] && kill $spid 2>/dev/null; rm -rf "$work"' EXIT
cat > "$work/meta.py" <<'EOF'
import json, sys, time
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata
addr, commits, creates = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
admin = KafkaAdminClient(bootstrap_servers=addr)
admin.create_topics([NewTopic("m", 1, 1)])
c = KafkaConsumer(bootstrap_servers=addr, group_id="g", enable_auto_commit=False)
tp = TopicPartition("m", 0)
t0 = time.perf_counter()
for i in range(commits):
    c.commit({tp: OffsetAndMetadata(0, None, -1)})
commit_s = time.perf_counter() - t0
t0 = time.perf_counter()
for i in range(creates):
    admin.create_topics([NewTopic(f"t{i}", 1, 1)])
create_s = time.perf_counter() - t0
print(json.dumps({"commits_per_s": round(commits / commit_s), "creates_per_s": round(creates / create_s)}))
EOF
echo "# $(uname -m), $(nproc) cores, $(date -u +%F); $commits commits, $creates topic creates per run"
for i in $(seq "$repeat"); do
  for b in "${bins[@]}"; do
    rm -rf "$work/data"
    BROOK_LOG=warn,brook::serve=info "$b" serve --data-dir "$work/data" --native 127.0.0.1:0 \
      --http 127.0.0.1:0 --mqtt 127.0.0.1:0 --kafka 127.0.0.1:0 2> "$work/log" &
    spid=$!
    for _ in $(seq 100); do grep -q 'kafka=' "$work/log" && break; sleep 0.1; done
    kafka=$(grep -o 'kafka=[0-9.:]*' "$work/log" | head -n 1 | cut -d= -f2)
    [ -n "$kafka" ] || { cat "$work/log" >&2; exit 1; }
    echo "{\"run\":$i,\"brook\":\"$b\",\"result\":$("$python" "$work/meta.py" "$kafka" "$commits" "$creates")}"
    kill "$spid"; wait "$spid" 2>/dev/null || true; spid=
  done
done
