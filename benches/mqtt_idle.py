"""Opens N idle MQTT 3.1.1 connections to HOST:PORT, prints when all are connected, waits for
a line on stdin, closes them all, and waits for another line before exiting."""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for i in range(n):
    s = socket.create_connection((host, port))
    cid = f"idle-{i}".encode()
    var = b"\x00\x04MQTT\x04\x02\x00\x3c"  # level 4, clean session, keepalive 60
    payload = len(cid).to_bytes(2, "big") + cid
    body = var + payload
    s.sendall(bytes([0x10, len(body)]) + body)
    ack = s.recv(4)
    assert ack[:1] == b"\x20", ack
    socks.append(s)
print("connected", flush=True)
sys.stdin.readline()
for s in socks:
    s.close()
print("closed", flush=True)
sys.stdin.readline()
