#!/usr/bin/env python3
"""An independent protocol v2 device (docs/PROTOCOL.md, "Protocol version
2"): Noise by Python's `noiseprotocol`, SCRAM-SHA-256 with the
`tether-noise` channel binding by hashlib/hmac, postcard by tether_wire.py.
Nobody here wrote the Noise library; the rest follows the document only.

It logs in over NN (no --server-key) or NK (--server-key HEX, pinned),
checks the server signature, calls `echo` with each --echo argument,
checks every reply, and checks every frame it receives: each sealed frame's
seq is exactly the next one and it opens with nonce = seq. With --tamper it
finally sends a call with one flipped bit and expects the server to close
the session (Goodbye bad_tag, sealed, or the end of the stream).

    v2_client.py --port P --user alice --password pw [--server-key HEX] \\
        [--echo hi ...] [--tamper]

Prints one JSON object on stdout: {"ok", "pattern", "handshake_hash",
"welcome", "replies", "frames", "tamper", "error", "refused"}. Exit status
0 when everything checked out.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import sys

from noise.connection import Keypair, NoiseConnection

import tether_wire as w

VERSION = 2
PATTERNS = {"NN": 0, "NK": 1}
NAMES = {"NN": b"Noise_NN_25519_ChaChaPoly_SHA256", "NK": b"Noise_NK_25519_ChaChaPoly_SHA256"}
GS2 = "p=tether-noise,,"
MAX_FRAME = 4096


class Failure(Exception):
    pass


def send_frame(sock, body):
    sock.sendall(struct.pack(">H", len(body)) + body)


def recv_frame(sock):
    return w.recv_frame(sock, MAX_FRAME)


class Sealed:
    """v2 sealed frames: seq (u64 BE) || ChaCha20-Poly1305(msg) || tag,
    nonce = seq, one count per direction from the first sealed frame."""

    def __init__(self, noise, report):
        self.noise = noise
        self.send_seq = 0
        self.recv_seq = 0
        self.report = report

    def seal(self, message):
        body = struct.pack(">Q", self.send_seq) + self.noise.encrypt(message)
        self.send_seq += 1
        return body

    def send(self, sock, message):
        send_frame(sock, self.seal(message))

    def recv(self, sock):
        body = recv_frame(sock)
        if len(body) < 8 + 16 + 1:
            raise Failure(f"sealed frame of {len(body)} bytes")
        (seq,) = struct.unpack(">Q", body[:8])
        if seq != self.recv_seq:
            raise Failure(f"seq {seq}, expected {self.recv_seq}")
        plain = self.noise.decrypt(body[8:])
        self.recv_seq += 1
        self.report["frames"] += 1
        return plain


def scram_proof(username, password, client_first_bare, server_first, h):
    """The client-final-message and the expected server signature."""
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
    c = base64.b64encode(GS2.encode() + h).decode()
    without_proof = f"c={c},r={nonce}"
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    auth = ",".join([client_first_bare, server_first, without_proof]).encode()
    signature = hmac.new(stored_key, auth, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    server_signature = hmac.new(server_key, auth, hashlib.sha256).digest()
    return f"{without_proof},p={base64.b64encode(proof).decode()}", server_signature


def expect(body, variant, report):
    tag, m = w.decode_handshake(body)
    if tag == w.REFUSED:
        report["refused"] = m["code_name"]
        raise Failure(f"refused: {m['code_name']}")
    if tag != variant:
        raise Failure(f"handshake variant {tag}, expected {variant}")
    return m


def run(args, report):
    pattern = "NK" if args.server_key else "NN"
    report["pattern"] = pattern
    noise = NoiseConnection.from_name(NAMES[pattern])
    noise.set_as_initiator()
    if args.server_key:
        noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, bytes.fromhex(args.server_key))
    noise.set_prologue(b"tether/2" + bytes([VERSION, PATTERNS[pattern]]))
    noise.start_handshake()

    sock = socket.create_connection(("127.0.0.1", args.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client_nonce = base64.b64encode(os.urandom(18)).decode()
    bare = f"n={args.user.replace('=', '=3D').replace(',', '=2C')},r={client_nonce}"
    hello = w.encode_hello(1, MAX_FRAME, GS2 + bare, version=VERSION)

    # Frame 1: 02, pattern, Noise message 1 (NK: the hello inside).
    m1 = noise.write_message(hello if pattern == "NK" else b"")
    send_frame(sock, bytes([VERSION, PATTERNS[pattern]]) + m1)
    f2 = recv_frame(sock)
    if len(f2) < 48:
        expect(f2, w.CHALLENGE, report)  # a clear refusal raises
    payload = noise.read_message(f2)
    if not noise.handshake_finished:
        raise Failure("handshake not finished after message 2")
    h = noise.get_handshake_hash()
    report["handshake_hash"] = h.hex()
    sealed = Sealed(noise, report)
    if pattern == "NN":
        if payload != b"":
            raise Failure("NN message 2 carries a payload")
        sealed.send(sock, hello)
        challenge = expect(sealed.recv(sock), w.CHALLENGE, report)
    else:
        challenge = expect(payload, w.CHALLENGE, report)
    if challenge["mechanism"] != w.SCRAM_SHA_256:
        raise Failure("not SCRAM-SHA-256")
    server_first = challenge["server_first"]
    if not server_first.startswith(f"r={client_nonce}"):
        raise Failure("server nonce does not extend ours")
    client_final, server_signature = scram_proof(args.user, args.password, bare, server_first, h)
    sealed.send(sock, w.encode_proof(client_final))
    welcome = expect(sealed.recv(sock), w.WELCOME, report)
    if welcome["server_final"] != "v=" + base64.b64encode(server_signature).decode():
        raise Failure("wrong server signature")
    report["welcome"] = {k: welcome[k] for k in ("session_id", "max_frame", "heartbeat_secs")}

    for i, text in enumerate(args.echo, start=1):
        sealed.send(sock, w.encode_call(i, "echo", w.string(text)))
        while True:
            tag, m = w.decode_message(sealed.recv(sock))
            if tag == w.PING:
                sealed.send(sock, w.encode_pong(m["nonce"]))
                continue
            break
        if tag != w.REPLY or m["id"] != i:
            raise Failure(f"expected the reply to call {i}, got {tag} {m}")
        r = w.Reader(m["result"])
        got = r.string()
        r.end()
        if got != text:
            raise Failure(f"echo {text!r} came back {got!r}")
        report["replies"].append(got)

    if args.tamper:
        body = bytearray(sealed.seal(w.encode_call(99, "echo", w.string("tampered"))))
        body[8] ^= 0x01
        send_frame(sock, bytes(body))
        try:
            tag, m = w.decode_message(sealed.recv(sock))
            report["tamper"] = m.get("reason_name", f"variant {tag}")
            if tag != w.GOODBYE:
                raise Failure(f"tampered call answered with {tag}")
        except w.PeerClosed:
            report["tamper"] = "closed"
    sock.close()
    report["ok"] = True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--server-key")
    p.add_argument("--echo", action="append", default=[])
    p.add_argument("--tamper", action="store_true")
    args = p.parse_args()
    report = {"ok": False, "frames": 0, "replies": [], "error": None, "refused": None, "tamper": None}
    try:
        run(args, report)
    except Exception as e:  # noqa: BLE001 - reported, then a failing status
        report["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(report), flush=True)
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
