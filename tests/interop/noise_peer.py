#!/usr/bin/env python3
"""An independent Noise peer for tether-core's `noise` module: Python's
`noiseprotocol` (nobody here wrote it) runs Noise_NN or Noise_NK
_25519_ChaChaPoly_SHA256 over TCP with the framing of docs/PROTOCOL.md's
v2 draft, and checks what tether-core sends.

Frames: u16 big-endian length, then the body. Bodies:
  1. initiator -> responder: Noise message 1 (its payload: the initiator's
     hello bytes);
  2. responder -> initiator: Noise message 2 (its payload: b"ack:" + hello);
  3. then transport frames, the v2 session layout: seq (u64 BE) ||
     ChaCha20-Poly1305 ciphertext || tag, with the AEAD nonce = seq (the
     receiver checks seq is exactly the next one). The responder answers
     each with b"echo:" + payload; the initiator sends --messages of them.

    noise_peer.py responder --pattern NK --static-key HEX --prologue HEX
        prints `LISTENING <port>`, serves one connection, then prints a JSON
        report on stdout
    noise_peer.py initiator --pattern NK --remote-static HEX --prologue HEX \\
        --port P --hello HEX --messages N
        connects, runs the exchange, prints a JSON report on stdout

The report: {"ok": bool, "handshake_hash": hex, "received": [hex...],
"error": str}. Exit status 0 only when everything checked out.
"""

import argparse
import json
import socket
import struct
import sys

from noise.connection import Keypair, NoiseConnection

PROTOCOLS = {
    "NN": b"Noise_NN_25519_ChaChaPoly_SHA256",
    "NK": b"Noise_NK_25519_ChaChaPoly_SHA256",
}


def log(*parts):
    print("noise_peer:", *parts, file=sys.stderr, flush=True)


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed {n - len(buf)} bytes before the end of a frame")
        buf += chunk
    return buf


def recv_frame(sock):
    (length,) = struct.unpack(">H", read_exact(sock, 2))
    if length == 0:
        raise ValueError("frame of length 0")
    return read_exact(sock, length)


def send_frame(sock, body):
    sock.sendall(struct.pack(">H", len(body)) + body)


class Session:
    """Transport frames: seq || ciphertext, nonce = seq."""

    def __init__(self, noise):
        self.noise = noise
        self.send_seq = 0
        self.recv_seq = 0

    def send(self, sock, payload):
        body = struct.pack(">Q", self.send_seq) + self.noise.encrypt(payload)
        self.send_seq += 1
        send_frame(sock, body)

    def recv(self, sock):
        body = recv_frame(sock)
        if len(body) < 8 + 16:
            raise ValueError(f"transport frame of {len(body)} bytes is too short")
        (seq,) = struct.unpack(">Q", body[:8])
        if seq != self.recv_seq:
            raise ValueError(f"transport frame seq {seq}, expected {self.recv_seq}")
        # noiseprotocol's receiving nonce is its own count: equal to seq.
        payload = self.noise.decrypt(body[8:])
        self.recv_seq += 1
        return payload


def connection(args, initiator):
    noise = NoiseConnection.from_name(PROTOCOLS[args.pattern])
    if initiator:
        noise.set_as_initiator()
        if args.pattern == "NK":
            noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, bytes.fromhex(args.remote_static))
    else:
        noise.set_as_responder()
        if args.pattern == "NK":
            noise.set_keypair_from_private_bytes(Keypair.STATIC, bytes.fromhex(args.static_key))
    noise.set_prologue(bytes.fromhex(args.prologue))
    noise.start_handshake()
    return noise


def respond(args, report):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(30)
    print(f"LISTENING {listener.getsockname()[1]}", flush=True)
    sock, _ = listener.accept()
    sock.settimeout(30)
    with sock:
        noise = connection(args, initiator=False)
        hello = noise.read_message(recv_frame(sock))
        report["received"].append(hello.hex())
        send_frame(sock, noise.write_message(b"ack:" + hello))
        assert noise.handshake_finished
        report["handshake_hash"] = noise.get_handshake_hash().hex()
        session = Session(noise)
        while True:
            try:
                payload = session.recv(sock)
            except EOFError:
                break
            report["received"].append(payload.hex())
            session.send(sock, b"echo:" + payload)


def initiate(args, report):
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=30)
    with sock:
        noise = connection(args, initiator=True)
        hello = bytes.fromhex(args.hello)
        send_frame(sock, noise.write_message(hello))
        ack = noise.read_message(recv_frame(sock))
        if ack != b"ack:" + hello:
            raise ValueError(f"message 2 payload {ack!r}, expected ack: + hello")
        assert noise.handshake_finished
        report["handshake_hash"] = noise.get_handshake_hash().hex()
        session = Session(noise)
        for i in range(args.messages):
            payload = f"call {i} ".encode() + bytes(range(i % 7))
            session.send(sock, payload)
            echo = session.recv(sock)
            if echo != b"echo:" + payload:
                raise ValueError(f"echo {echo!r} for {payload!r}")
            report["received"].append(echo.hex())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["initiator", "responder"])
    parser.add_argument("--pattern", choices=sorted(PROTOCOLS), required=True)
    parser.add_argument("--prologue", default="")
    parser.add_argument("--static-key", help="responder's X25519 private key (NK), hex")
    parser.add_argument("--remote-static", help="the responder's public key the initiator pins (NK), hex")
    parser.add_argument("--port", type=int, help="initiator: the responder's port")
    parser.add_argument("--hello", default="", help="initiator: message 1's payload, hex")
    parser.add_argument("--messages", type=int, default=3)
    args = parser.parse_args()
    report = {"ok": False, "handshake_hash": None, "received": [], "error": None}
    try:
        (initiate if args.role == "initiator" else respond)(args, report)
        report["ok"] = True
    except Exception as e:  # reported to the Rust test, which fails on it
        report["error"] = f"{type(e).__name__}: {e}"
        log(report["error"])
    print(json.dumps(report), flush=True)
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
