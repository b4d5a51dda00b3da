"""Delivery across broker crashes, seen by paho-mqtt clients.

A QoS 2 publisher (3.1.1, persistent session) sends COUNT numbered messages to eo/data, at most
WINDOW unacknowledged at a time, once both subscriptions are acknowledged (SUBACK); two
persistent subscribers (3.1.1 and 5.0, subscribed at
--sub-qos) stay connected through paho's automatic reconnect. The test that runs this kills and
restarts the broker on the same port while it runs (it reads the "acked N" lines). When every
message is acknowledged, a last message "end" is published: the session's redeliveries come
before it, so once each subscriber has it, nothing more is owed. Prints one JSON line with what
each client saw and exits 0; exits 1 if the run does not finish within --timeout seconds.

Run by tests/mqtt_clients.rs (delivery_across_kill_9_*).
"""

import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WINDOW = 50


def say(*parts):
    print(*parts, flush=True)


class Subscriber:
    def __init__(self, name, v5, port, sub_qos):
        self.name = name
        self.lock = threading.Condition()
        self.counts = {}
        self.epoch = 0
        # The subscription is in place (SUBACK, or a resumed session): only then may the
        # publisher start, or its first messages precede the subscription and match nothing.
        self.subscribed = False
        self.dups_by_epoch = {}
        self.dup_flags = 0
        self.ended = False
        self.sub_qos = sub_qos
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        kwargs = {} if v5 else {"clean_session": False}
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=proto, **kwargs)
        self.c.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
        self.c.on_connect = self.on_connect
        self.c.on_message = self.on_message
        self.c.on_subscribe = self.on_subscribe
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self.c.connect("127.0.0.1", port, keepalive=10, clean_start=False, properties=props)
        else:
            self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()

    def on_connect(self, c, _ud, flags, rc, _props):
        if rc != 0:
            say("refused", self.name, rc)
            return
        with self.lock:
            self.epoch += 1
            epoch = self.epoch
        # A resumed session keeps its subscription; subscribing again is not needed.
        if not flags.session_present:
            if epoch > 1:
                say("session lost", self.name, epoch)
            c.subscribe("eo/#", qos=self.sub_qos)
        say("connected", self.name, epoch)

    def on_subscribe(self, _c, _ud, _mid, _codes, _props):
        with self.lock:
            self.subscribed = True
            self.lock.notify_all()

    def on_message(self, _c, _ud, m):
        with self.lock:
            if m.payload == b"end":
                self.ended = True
                self.lock.notify_all()
                return
            n = int(m.payload)
            if m.dup:
                self.dup_flags += 1
            if n in self.counts:
                self.dups_by_epoch[self.epoch] = self.dups_by_epoch.get(self.epoch, 0) + 1
            self.counts[n] = self.counts.get(n, 0) + 1
            self.lock.notify_all()

    def report(self, count):
        with self.lock:
            return {
                "distinct": sum(1 for n in range(count) if n in self.counts),
                "delivered": sum(self.counts.values()),
                "duplicates": sum(v - 1 for v in self.counts.values()),
                "dups_by_epoch": {str(k): v for k, v in sorted(self.dups_by_epoch.items())},
                "dup_flags": self.dup_flags,
                "epochs": self.epoch,
                # For a failure's report: which were lost, and which came twice.
                "missing": [n for n in range(count) if n not in self.counts][:20],
                "twice": sorted(n for n, v in self.counts.items() if v > 1)[:20],
            }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--sub-qos", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()
    deadline = time.monotonic() + a.timeout

    subs = [
        Subscriber("eo-sub-311", False, a.port, a.sub_qos),
        Subscriber("eo-sub-5", True, a.port, a.sub_qos),
    ]
    for s in subs:
        with s.lock:
            ok = s.lock.wait_for(lambda s=s: s.subscribed, timeout=30)
        if not ok:
            say("subscriber did not connect", s.name)
            return 1

    acked = set()
    mids = {}
    early = set()  # acknowledged before publish() returned its mid
    cond = threading.Condition()

    def ack(n):
        acked.add(n)
        if len(acked) % 250 == 0:
            say("acked", len(acked))
        cond.notify_all()

    def on_publish(_c, _ud, mid, _rc, _props):
        with cond:
            n = mids.get(mid)
            if n is None:
                early.add(mid)
            else:
                ack(n)

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="eo-pub", protocol=mqtt.MQTTv311,
                      clean_session=False)
    pub.max_inflight_messages_set(20)
    pub.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
    pub.on_publish = on_publish
    pub.on_connect = lambda *_: say("connected eo-pub")
    pub.connect("127.0.0.1", a.port, keepalive=10)
    pub.loop_start()

    for n in range(a.count):
        with cond:
            if not cond.wait_for(lambda: n - len(acked) < WINDOW,
                                 timeout=max(0, deadline - time.monotonic())):
                say("timed out publishing", n, "acked", len(acked))
                return 1
        # Not under `cond`: paho calls on_publish holding its own locks, which publish takes.
        info = pub.publish("eo/data", str(n).encode(), qos=2)
        with cond:
            mids[info.mid] = n
            if info.mid in early:
                early.discard(info.mid)
                ack(n)
    with cond:
        if not cond.wait_for(lambda: len(acked) == a.count,
                             timeout=max(0, deadline - time.monotonic())):
            say("timed out waiting for acknowledgements", len(acked))
            return 1
    pub.publish("eo/data", b"end", qos=2)
    for s in subs:
        with s.lock:
            if not s.lock.wait_for(lambda s=s: s.ended,
                                   timeout=max(0, deadline - time.monotonic())):
                say("timed out waiting for", s.name, json.dumps(s.report(a.count)))
                return 1
    pub.loop_stop()
    pub.disconnect()
    for s in subs:
        s.c.loop_stop()
        s.c.disconnect()
    say("result", json.dumps({"acked": len(acked),
                              "subscribers": {s.name: s.report(a.count) for s in subs}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
