#!/usr/bin/env python3
"""MQTT over WebSockets with paho-mqtt's websockets transport (PyPI), as a browser-style client.

Against a `brook serve` with listeners.mqtt_ws (and mqtt_wss with --ca): MQTT 5.0 and 3.1.1
clients over WebSockets log in, subscribe and get their own QoS 1 publish back; a plain TCP
subscriber gets what a WebSocket client published (the same hub); over TLS the same; a wrong
password is refused over WebSockets as on TCP. Prints "all websocket checks passed".
"""

import argparse
import queue
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def client(name, port, transport, v5, ca=None, user="ops", password="pw-ops"):
    proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=proto, transport=transport)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    if ca:
        c.tls_set(ca_certs=ca)
    c.username_pw_set(user, password)
    got = queue.Queue()
    connected = queue.Queue()
    c.subacks = queue.Queue()
    c.on_message = lambda _c, _u, m: got.put((m.topic, m.payload))
    c.on_connect = lambda _c, _u, _f, rc, _p=None: connected.put(rc)
    c.on_subscribe = lambda _c, _u, mid, _codes, _p=None: c.subacks.put(mid)
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    rc = connected.get(timeout=10)
    return c, got, rc


def roundtrip(name, port, v5, ca=None, tcp_port=None):
    c, got, rc = client(name, port, "websockets", v5, ca)
    assert not rc.is_failure, f"{name}: CONNACK {rc}"
    watcher = None
    if tcp_port:
        watcher, wgot, wrc = client(name + "-tcp", tcp_port, "tcp", True)
        assert not wrc.is_failure
        r, mid = watcher.subscribe("commands/ws/#", qos=1)
        assert r == mqtt.MQTT_ERR_SUCCESS
        # Its own connection: the round trip below says nothing about it; its SUBACK does.
        assert watcher.subacks.get(timeout=10) == mid, f"{name}-tcp: SUBACK"
    r, _ = c.subscribe("commands/ws/#", qos=1)
    assert r == mqtt.MQTT_ERR_SUCCESS
    import time
    # The SUBACKs come back before the publish is sent: wait for them by a round trip.
    deadline = time.time() + 10
    while time.time() < deadline:
        info = c.publish(f"commands/ws/{name}", b"over websockets " + name.encode(), qos=1)
        info.wait_for_publish(timeout=10)
        try:
            topic, payload = got.get(timeout=2)
            break
        except queue.Empty:
            continue
    else:
        raise AssertionError(f"{name}: own message never came back")
    assert payload.startswith(b"over websockets"), payload
    if watcher:
        while True:
            topic, payload = wgot.get(timeout=10)
            if payload.startswith(b"over websockets"):
                break
        watcher.loop_stop()
        watcher.disconnect()
    c.loop_stop()
    c.disconnect()
    print(f"ok: {name}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ws", type=int, required=True)
    ap.add_argument("--wss", type=int, required=True)
    ap.add_argument("--tcp", type=int, required=True)
    ap.add_argument("--ca", required=True)
    a = ap.parse_args()
    roundtrip("ws5", a.ws, True, tcp_port=a.tcp)
    roundtrip("ws3", a.ws, False)
    roundtrip("wss5", a.wss, True, ca=a.ca)
    c, _, rc = client("wsbad", a.ws, "websockets", True, password="wrong")
    assert rc.is_failure, f"a wrong password over WebSockets: {rc}"
    c.loop_stop()
    print("ok: wrong password refused")
    print("all websocket checks passed")


if __name__ == "__main__":
    sys.exit(main())
