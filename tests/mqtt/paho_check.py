"""Scenarios with paho-mqtt (3.1.1 and 5.0) against a running Brook; run by
tests/mqtt_clients.rs. Exits non-zero with a message on the first failed check."""

import argparse
import queue
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT = 20.0


class Client:
    """A paho client whose callbacks feed queues the checks wait on."""

    def __init__(self, port, client_id, v5, clean=True, expiry=None):
        self.messages = queue.Queue()
        self.acks = queue.Queue()
        self.connected = queue.Queue()
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        kwargs = {} if v5 else {"clean_session": clean}
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto, **kwargs
        )
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, rc, p: self.acks.put(("sub", mid, rc))
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.put(("pub", mid, rc))
        self.c.on_connect = lambda c, u, flags, rc, p: self.connected.put((flags, rc))
        if v5:
            props = Properties(PacketTypes.CONNECT)
            if expiry is not None:
                props.SessionExpiryInterval = expiry
            self.c.connect("127.0.0.1", port, keepalive=30, clean_start=clean, properties=props)
        else:
            self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        flags, rc = self.connected.get(timeout=WAIT)
        check(not rc.is_failure, f"{client_id}: connect refused: {rc}")
        self.session_present = flags.session_present

    def subscribe(self, topic, qos):
        _, mid = self.c.subscribe(topic, qos)
        while True:
            kind, got, rc = self.acks.get(timeout=WAIT)
            if kind == "sub" and got == mid:
                check(all(not r.is_failure for r in rc), f"subscribe {topic}: {rc}")
                return

    def publish(self, topic, payload, qos, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos, retain, properties)
        info.wait_for_publish(WAIT)
        check(info.is_published(), f"publish {topic} not acknowledged")

    def next(self):
        return self.messages.get(timeout=WAIT)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)


def v311_qos_and_persistent_session(port):
    sub = Client(port, "paho-sub", v5=False, clean=False)
    sub.subscribe("paho/v3/#", 2)
    pub = Client(port, "paho-pub", v5=False)
    for q in (0, 1, 2):
        pub.publish("paho/v3/live", f"q{q}", q)
    got = [(m.payload.decode(), m.qos) for m in (sub.next(), sub.next(), sub.next())]
    check(got == [("q0", 0), ("q1", 1), ("q2", 2)], f"3.1.1 live delivery: {got}")
    sub.close()
    for i in range(50):
        pub.publish("paho/v3/away", str(i), 1)
    sub = Client(port, "paho-sub", v5=False, clean=False)
    check(sub.session_present, "3.1.1 session present on return")
    got = [sub.next().payload.decode() for _ in range(50)]
    check(got == [str(i) for i in range(50)], f"3.1.1 missed messages in order: {got[:5]}...")
    sub.close()
    pub.close()
    print("ok: 3.1.1 QoS 0/1/2 and persistent session")


def v5_request_response_and_properties(port):
    responder = Client(port, "paho-responder", v5=True)
    responder.subscribe("svc/time", 1)
    requester = Client(port, "paho-requester", v5=True)
    requester.subscribe("reply/paho", 1)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "reply/paho"
    props.CorrelationData = b"req-42"
    props.UserProperty = [("unit", "s")]
    props.ContentType = "text/plain"
    props.MessageExpiryInterval = 60
    requester.publish("svc/time", "now?", 1, properties=props)
    req = responder.next()
    p = req.properties
    check(p.ResponseTopic == "reply/paho", f"response topic passed: {p}")
    check(p.CorrelationData == b"req-42", "correlation data passed")
    check(("unit", "s") in p.UserProperty, f"user property passed: {p.UserProperty}")
    check(p.ContentType == "text/plain", "content type passed")
    check(0 < p.MessageExpiryInterval <= 60, f"expiry counted down: {p.MessageExpiryInterval}")
    back = Properties(PacketTypes.PUBLISH)
    back.CorrelationData = p.CorrelationData
    responder.publish(p.ResponseTopic, "12:00", 1, properties=back)
    ans = requester.next()
    check(ans.payload == b"12:00" and ans.properties.CorrelationData == b"req-42", "answer")
    responder.close()
    requester.close()
    print("ok: 5.0 request/response with properties")


def v5_shared_subscription_and_session_expiry(port):
    a = Client(port, "paho-a", v5=True)
    b = Client(port, "paho-b", v5=True)
    a.subscribe("$share/grp/work/+", 1)
    b.subscribe("$share/grp/work/+", 1)
    pub = Client(port, "paho-pub5", v5=True)
    for i in range(40):
        pub.publish(f"work/{i % 4}", str(i), 1)
    seen = []
    deadline = time.time() + WAIT
    counts = {"a": 0, "b": 0}
    while len(seen) < 40 and time.time() < deadline:
        for name, c in (("a", a), ("b", b)):
            try:
                m = c.messages.get(timeout=0.05)
                seen.append(m.payload.decode())
                counts[name] += 1
            except queue.Empty:
                pass
    check(sorted(seen, key=int) == [str(i) for i in range(40)], f"each once: {len(seen)}")
    check(counts["a"] > 0 and counts["b"] > 0, f"both members worked: {counts}")
    a.close()
    b.close()
    # Session expiry > 0: kept while away; = 0: gone.
    s = Client(port, "paho-exp", v5=True, clean=True, expiry=300)
    s.subscribe("exp/#", 1)
    s.close()
    pub.publish("exp/x", "kept", 1)
    s = Client(port, "paho-exp", v5=True, clean=False, expiry=300)
    check(s.session_present, "5.0 session kept while away")
    check(s.next().payload == b"kept", "5.0 missed message")
    s.close()
    pub.close()
    print("ok: 5.0 shared subscription and session expiry")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    port = ap.parse_args().port
    v311_qos_and_persistent_session(port)
    v5_request_response_and_properties(port)
    v5_shared_subscription_and_session_expiry(port)
    print("all paho checks passed")


if __name__ == "__main__":
    main()
