"""Logins and ACLs with paho-mqtt (3.1.1 and 5.0) against a running Brook whose users file holds
sensor-1 / pw-sensor and ops / pw-ops and whose ACL is tests/security.rs's ACL; run by
tests/security.rs. Exits non-zero with a message on the first failed check."""

import argparse
import queue
import sys

import paho.mqtt.client as mqtt

WAIT = 20.0
NOT_AUTHORIZED = 0x87
BAD_LOGIN = 0x86


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)


class Client:
    """A paho client whose callbacks feed queues the checks wait on."""

    def __init__(self, port, client_id, v5, user=None, password=None, will=None, expect=0, tls=None):
        self.messages = queue.Queue()
        self.acks = queue.Queue()
        self.connected = queue.Queue()
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto)
        if user is not None:
            self.c.username_pw_set(user, password)
        if will is not None:
            self.c.will_set(will, b"gone", 1)
        if tls is not None:
            ca, cert, key = tls
            self.c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, rc, p: self.acks.put(("sub", mid, rc))
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.put(("pub", mid, rc))
        self.c.on_connect = lambda c, u, flags, rc, p: self.connected.put(rc)
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        rc = self.connected.get(timeout=WAIT)
        # paho gives 3.1.1 return codes as the matching 5.0 reason codes (4 -> 0x86, 5 -> 0x87).
        check(rc.value == expect, f"{client_id} as {user}: CONNACK {rc.value:#x}, wanted {expect:#x}")
        if expect != 0:
            self.c.loop_stop()
            self.c.disconnect()

    def subscribe(self, filters):
        _, mid = self.c.subscribe([(f, 1) for f in filters])
        while True:
            kind, got, rc = self.acks.get(timeout=WAIT)
            if kind == "sub" and got == mid:
                return [r.value for r in rc]

    def publish(self, topic, payload, qos):
        """Publishes and returns the acknowledgement's reason code (None for QoS 0)."""
        info = self.c.publish(topic, payload, qos)
        if qos == 0:
            return None
        while True:
            kind, got, rc = self.acks.get(timeout=WAIT)
            if kind == "pub" and got == info.mid:
                return rc.value

    def received(self, until):
        """Payloads received up to and including `until`."""
        out = []
        while True:
            m = self.messages.get(timeout=WAIT)
            out.append((m.topic, m.payload.decode()))
            if m.payload.decode() == until:
                return out

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def logins(port):
    for v5 in (True, False):
        Client(port, "wrong-pw", v5, "sensor-1", "nope", expect=BAD_LOGIN)
        Client(port, "unknown", v5, "mallory", "pw-sensor", expect=BAD_LOGIN)
        Client(port, "bad-will", v5, "sensor-1", "pw-sensor", will="alarms/x", expect=NOT_AUTHORIZED)
        Client(port, "good-will", v5, "sensor-1", "pw-sensor", will="sensors/sensor-1/lwt").close()
    print("ok: wrong password, unknown user, will outside the ACL refused; right ones accepted")


def acl(port):
    ops = Client(port, "ops-1", True, "ops", "pw-ops")
    check(ops.subscribe(["#"]) == [1], "ops may subscribe to #")
    for v5 in (True, False):
        s = Client(port, "dev1", v5, "sensor-1", "pw-sensor")
        denied = NOT_AUTHORIZED if v5 else 0x80
        # Within one SUBSCRIBE: allowed, partly overlapping (refused), allowed, wider (refused).
        got = s.subscribe(["commands/dev1/#", "commands/#", "public/x", "public/#"])
        check(got == [1, denied, 1, denied], f"v5={v5}: SUBACK codes {got}")
        tag = "v5" if v5 else "v3"
        ok_rc = s.publish("sensors/sensor-1/t", f"{tag}-allowed-1", 1)
        check(ok_rc == 0, f"{tag}: allowed QoS 1 publish acknowledged with {ok_rc:#x}")
        bad1 = s.publish("sensors/sensor-2/t", f"{tag}-denied-1", 1)
        bad2 = s.publish("alarms/fire", f"{tag}-denied-2", 2)
        s.publish("alarms/fire", f"{tag}-denied-0", 0)
        if v5:
            check(bad1 == NOT_AUTHORIZED, f"5.0 denied QoS 1 publish: PUBACK {bad1:#x}")
            # paho ignores a PUBREC's reason code and sends PUBREL anyway (its client.py says
            # so), so it reports the PUBCOMP's "packet id not found" (0x92): a failure either way.
            check(bad2 in (NOT_AUTHORIZED, 0x92), f"5.0 denied QoS 2 publish: {bad2:#x}")
        else:
            # 3.1.1 has no negative acknowledgement: acknowledged, dropped, counted.
            check(bad1 == 0 and bad2 == 0, f"3.1.1 denied publishes acknowledged: {bad1} {bad2}")
        check(s.publish("sensors/sensor-1/t", f"{tag}-allowed-2", 1) == 0, "second allowed")
        # Ops reaches the device on its command topic.
        ops.publish("commands/dev1/reboot", f"{tag}-cmd", 1)
        got = s.received(f"{tag}-cmd")
        check(got == [("commands/dev1/reboot", f"{tag}-cmd")], f"{tag}: device got {got}")
        s.close()
    ops.publish("public/end", "end", 1)
    seen = [p for (_, p) in ops.received("end")]
    want = ["v5-allowed-1", "v5-allowed-2", "v5-cmd", "v3-allowed-1", "v3-allowed-2", "v3-cmd", "end"]
    check(seen == want, f"ops saw {seen}, wanted {want}")
    # Anonymous clients may only read public/#.
    anon = Client(port, "anon", True)
    check(anon.subscribe(["public/#", "sensors/#"]) == [1, NOT_AUTHORIZED], "anonymous subscribe")
    check(anon.publish("public/a", "x", 1) == NOT_AUTHORIZED, "anonymous publish refused")
    anon.close()
    ops.close()
    print("ok: ACL for publish (5.0 reason codes, 3.1.1 dropped), subscribe, anonymous")


def tls(port, ca, cert, key):
    """Over TLS: a password login, and a client certificate whose CN is the user."""
    ops = Client(port, "ops-tls", True, "ops", "pw-ops", tls=(ca, None, None))
    check(ops.subscribe(["sensors/#"]) == [1], "ops subscribes over TLS")
    dev = Client(port, "dev-tls", False, tls=(ca, cert, key))
    check(dev.publish("sensors/sensor-1/tls", "over-tls", 1) == 0, "certificate user publishes")
    check(dev.subscribe(["commands/dev-tls/#", "commands/#"]) == [1, 0x80], "its ACL applies")
    got = ops.received("over-tls")
    check(got == [("sensors/sensor-1/tls", "over-tls")], f"ops got {got}")
    dev.close()
    ops.close()
    print("ok: paho over TLS with a password and with a client certificate (CN as user)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("scenario", choices=["logins", "acl", "tls"])
    a = ap.parse_args()
    if a.scenario == "tls":
        tls(a.port, a.ca, a.cert, a.key)
    else:
        {"logins": logins, "acl": acl}[a.scenario](a.port)


if __name__ == "__main__":
    main()
