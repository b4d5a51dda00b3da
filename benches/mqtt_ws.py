#!/usr/bin/env python3
"""MQTT over WebSockets against MQTT over TCP, one client each way, same broker, same run.

A paho-mqtt 5.0 client publishes N QoS 1 messages of 100 bytes (up to 64 in flight) to a
topic it is subscribed to, over TCP and then over WebSockets, alternately REPEAT times; prints
messages/s until every message came back, and the broker's CPU seconds per 10,000 messages
(from /proc/PID/stat). Usage: benches/mqtt_ws.py --tcp PORT --ws PORT --pid PID [-n N] [-r R]
(benches/mqtt_ws.sh starts the broker and runs this).
"""

import argparse
import json
import os
import queue
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(port, transport, n, pid, run_no):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"b-{transport}-{run_no}",
                    protocol=mqtt.MQTTv5, transport=transport)
    c.max_inflight_messages_set(64)
    c.max_queued_messages_set(0)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    got = [0]
    done = threading.Event()
    subscribed = queue.Queue()

    def on_message(_c, _u, _m):
        got[0] += 1
        if got[0] >= n:
            done.set()

    c.on_message = on_message
    c.on_subscribe = lambda *_a: subscribed.put(1)
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    topic = f"bench/{transport}/{run_no}"
    c.subscribe(topic, qos=1)
    subscribed.get(timeout=10)
    payload = b"x" * 100
    cpu0, t0 = cpu_seconds(pid), time.time()
    for _ in range(n):
        c.publish(topic, payload, qos=1)
    if not done.wait(timeout=300):
        raise SystemExit(f"{transport}: {got[0]} of {n} came back")
    secs, cpu = time.time() - t0, cpu_seconds(pid) - cpu0
    c.loop_stop()
    c.disconnect()
    return {"run": run_no, "transport": transport, "messages": n, "seconds": round(secs, 3),
            "msgs_per_s": int(n / secs), "broker_cpu_s_per_10k": round(cpu * 10000 / n, 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tcp", type=int, required=True)
    ap.add_argument("--ws", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("-r", type=int, default=3)
    a = ap.parse_args()
    for i in range(1, a.r + 1):
        print(json.dumps(run(a.tcp, "tcp", a.n, a.pid, i)))
        print(json.dumps(run(a.ws, "websockets", a.n, a.pid, i)))


if __name__ == "__main__":
    main()
