#!/usr/bin/env python3
"""A DNS relay that keeps what crosses it: seeds for the fuzz targets.

    capture_relay.py LISTEN_PORT UPSTREAM_PORT OUT_DIR

Relays UDP and TCP on 127.0.0.1:LISTEN_PORT to 127.0.0.1:UPSTREAM_PORT (Knot) and writes
every distinct query to OUT_DIR/queries/ and every distinct answer to OUT_DIR/answers/,
named by the SHA-1 of the message without its ID. Used by the integration test
`fuzz_seeds::capture` (run by fuzz/capture-seeds.sh), with dnslens between the real
clients and this relay: dnslens forwards each client query byte for byte but the ID.
"""
import hashlib
import os
import socket
import struct
import sys
import threading


def keep(out_dir, kind, message):
    if len(message) < 12:
        return
    digest = hashlib.sha1(message[2:]).hexdigest()[:16]
    path = os.path.join(out_dir, kind, digest)
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(message)


def relay_udp(listen, upstream, out_dir):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(listen)
    while True:
        query, client = sock.recvfrom(65535)
        keep(out_dir, "queries", query)

        def exchange(query=query, client=client):
            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            up.settimeout(3)
            try:
                up.sendto(query, upstream)
                answer, _ = up.recvfrom(65535)
            except OSError:
                return
            finally:
                up.close()
            keep(out_dir, "answers", answer)
            sock.sendto(answer, client)

        threading.Thread(target=exchange, daemon=True).start()


def read_frame(conn):
    head = conn.recv(2, socket.MSG_WAITALL)
    if len(head) < 2:
        return None
    (length,) = struct.unpack("!H", head)
    body = conn.recv(length, socket.MSG_WAITALL) if length else b""
    return body if len(body) == length else None


def relay_tcp_connection(conn, upstream, out_dir):
    with conn, socket.create_connection(upstream, timeout=3) as up:
        while True:
            query = read_frame(conn)
            if query is None:
                return
            keep(out_dir, "queries", query)
            up.sendall(struct.pack("!H", len(query)) + query)
            answer = read_frame(up)
            if answer is None:
                return
            keep(out_dir, "answers", answer)
            conn.sendall(struct.pack("!H", len(answer)) + answer)


def relay_tcp(listen, upstream, out_dir):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(listen)
    server.listen(64)
    while True:
        conn, _ = server.accept()
        threading.Thread(
            target=relay_tcp_connection, args=(conn, upstream, out_dir), daemon=True
        ).start()


def main():
    listen = ("127.0.0.1", int(sys.argv[1]))
    upstream = ("127.0.0.1", int(sys.argv[2]))
    out_dir = sys.argv[3]
    for kind in ("queries", "answers"):
        os.makedirs(os.path.join(out_dir, kind), exist_ok=True)
    threading.Thread(target=relay_tcp, args=(listen, upstream, out_dir), daemon=True).start()
    relay_udp(listen, upstream, out_dir)


if __name__ == "__main__":
    main()
