"""Opens N idle connections of PROTOCOL (mqtt: CONNECT of a 3.1.1 clean session and its CONNACK;
native: the Handshake and its answer) to HOST:PORT with plain sockets, prints when all are
connected, waits for a line on stdin, closes them all, and waits for another line before
exiting.
    idle_clients.py mqtt|native HOST PORT N"""
import socket, struct, sys


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def recv_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, "closed before the answer"
        data += chunk
    return data


def mqtt(s, i):
    cid = f"idle-{i}".encode()
    var = b"\x00\x04MQTT\x04\x02\x00\x3c"  # level 4, clean session, keepalive 60
    body = var + len(cid).to_bytes(2, "big") + cid
    s.sendall(bytes([0x10, len(body)]) + body)
    ack = recv_exactly(s, 4)
    assert ack[:1] == b"\x20", ack


def native(s, i):
    cid = f"idle-{i}".encode()
    # postcard RequestFrame { correlation_id: 1, Request::Handshake (variant 0) { version: 2, client_id } }
    msg = varint(1) + varint(0) + varint(2) + varint(len(cid)) + cid
    s.sendall(struct.pack("<II", 4 + len(msg), crc32c(msg)) + msg)
    (n,) = struct.unpack("<I", recv_exactly(s, 4))
    recv_exactly(s, n)


protocol, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
handshake = {"mqtt": mqtt, "native": native}[protocol]
socks = []
for i in range(n):
    s = socket.create_connection((host, port))
    handshake(s, i)
    socks.append(s)
print("connected", flush=True)
sys.stdin.readline()
for s in socks:
    s.close()
print("closed", flush=True)
sys.stdin.readline()
