#!/usr/bin/env python3
"""The protocol v2 draft's test vectors (docs/PROTOCOL.md, "Protocol v2
(draft)"), computed independently of tether-core: the Noise messages by
Python's `noiseprotocol` with fixed ephemeral keys, SCRAM with channel
binding by hashlib/hmac, postcard by tether_wire.py.

    noise_vectors.py                      print the vectors
    noise_vectors.py --check PROTOCOL.md  exit 1 unless the doc prints them

The fixed keys are for vectors only: real ephemeral keys are fresh random
bytes for every connection.
"""

import base64
import warnings
import hashlib
import hmac
import re
import struct
import sys

from noise.connection import Keypair, NoiseConnection

import tether_wire as w

# noiseprotocol warns that fixed ephemeral keys are for tests: they are.
warnings.filterwarnings("ignore", message="One of ephemeral keypairs is already set")

SERVER_STATIC = bytes(range(0x00, 0x20))
DEVICE_EPHEMERAL = bytes(range(0x20, 0x40))
SERVER_EPHEMERAL = bytes(range(0x40, 0x60))
VERSION = 2
PATTERNS = {"NN": 0, "NK": 1}
CB_NAME = "tether-noise"

# RFC 7677's exchange ("user" / "pencil"), now with channel binding.
USERNAME = "user"
PASSWORD = b"pencil"
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
GS2_HEADER = f"p={CB_NAME},,"


def prologue(pattern):
    """"tether/2" || the two clear-text bytes before Noise message 1."""
    return b"tether/2" + bytes([VERSION, PATTERNS[pattern]])


def frame(body):
    return struct.pack(">H", len(body)) + body


def noise_pair(pattern):
    names = {"NN": b"Noise_NN_25519_ChaChaPoly_SHA256", "NK": b"Noise_NK_25519_ChaChaPoly_SHA256"}
    device, server = NoiseConnection.from_name(names[pattern]), NoiseConnection.from_name(names[pattern])
    device.set_as_initiator()
    server.set_as_responder()
    device.set_keypair_from_private_bytes(Keypair.EPHEMERAL, DEVICE_EPHEMERAL)
    server.set_keypair_from_private_bytes(Keypair.EPHEMERAL, SERVER_EPHEMERAL)
    if pattern == "NK":
        server.set_keypair_from_private_bytes(Keypair.STATIC, SERVER_STATIC)
        device.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, server.noise_protocol.keypairs["s"].public_bytes)
    for c in (device, server):
        c.set_prologue(prologue(pattern))
        c.start_handshake()
    return device, server


def transport(conn, seq, message):
    """A v2 session frame: seq || ciphertext || tag, nonce = seq."""
    return frame(struct.pack(">Q", seq) + conn.encrypt(message))


def scram(h):
    """SCRAM-SHA-256 of the RFC 7677 exchange, bound to handshake hash h."""
    client_first = f"{GS2_HEADER}n={USERNAME},r={CLIENT_NONCE}"
    bare = client_first[len(GS2_HEADER):]
    c = base64.b64encode(GS2_HEADER.encode() + h).decode()
    nonce = SERVER_FIRST.split(",")[0][2:]
    without_proof = f"c={c},r={nonce}"
    salt = base64.b64decode(SERVER_FIRST.split(",s=")[1].split(",")[0])
    salted = hashlib.pbkdf2_hmac("sha256", PASSWORD, salt, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    auth = ",".join([bare, SERVER_FIRST, without_proof]).encode()
    signature = hmac.new(stored_key, auth, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    client_final = f"{without_proof},p={base64.b64encode(proof).decode()}"
    server_final = "v=" + base64.b64encode(hmac.new(server_key, auth, hashlib.sha256).digest()).decode()
    return client_first, c, client_final, server_final


def vectors():
    """(name, value) pairs, in the doc's order."""
    out = []
    server_public = None

    # NK: the Hello rides in message 1, the Challenge in message 2.
    device, server = noise_pair("NK")
    server_public = server.noise_protocol.keypairs["s"].public_bytes
    out.append(("server static public", server_public.hex()))
    client_first = f"{GS2_HEADER}n={USERNAME},r={CLIENT_NONCE}"
    hello = w.encode_hello(3, 512, client_first, version=VERSION)
    m1 = device.write_message(hello)
    assert server.read_message(m1) == hello
    out.append(("NK frame 1", frame(bytes([VERSION, PATTERNS["NK"]]) + m1).hex()))
    challenge = w.encode_challenge(w.SCRAM_SHA_256, SERVER_FIRST)
    m2 = server.write_message(challenge)
    assert device.read_message(m2) == challenge
    out.append(("NK frame 2", frame(m2).hex()))
    h = device.get_handshake_hash()
    assert h == server.get_handshake_hash()
    out.append(("NK handshake hash", h.hex()))
    _, c, client_final, server_final = scram(h)
    out.append(("NK c=", c))
    out.append(("NK client-final", client_final))
    out.append(("NK server-final", server_final))
    out.append(("NK c2s seq 0 Proof", transport(device, 0, w.encode_proof(client_final)).hex()))
    out.append(("NK s2c seq 0 Welcome", transport(server, 0, w.encode_welcome(server_final, 1, 4096, 30)).hex()))
    out.append(("NK c2s seq 1 Call", transport(device, 1, w.encode_call(1, "echo", b"\x02hi")).hex()))

    # NN: empty handshake payloads, the Hello in the first transport frame.
    device, server = noise_pair("NN")
    m1 = device.write_message(b"")
    assert server.read_message(m1) == b""
    out.append(("NN frame 1", frame(bytes([VERSION, PATTERNS["NN"]]) + m1).hex()))
    m2 = server.write_message(b"")
    assert device.read_message(m2) == b""
    out.append(("NN frame 2", frame(m2).hex()))
    h = device.get_handshake_hash()
    out.append(("NN handshake hash", h.hex()))
    out.append(("NN c2s seq 0 Hello", transport(device, 0, hello).hex()))
    challenge = w.encode_challenge(w.SCRAM_SHA_256, SERVER_FIRST)
    out.append(("NN s2c seq 0 Challenge", transport(server, 0, challenge).hex()))
    out.append(("NN c=", scram(h)[1]))
    return out


def main():
    vs = vectors()
    if len(sys.argv) == 1:
        for name, value in vs:
            print(f"{name:24} {value}")
        return
    if len(sys.argv) != 3 or sys.argv[1] != "--check":
        sys.exit(__doc__)
    doc = open(sys.argv[2], encoding="utf-8").read()
    missing = [name for name, value in vs if not re.search(rf"^{re.escape(name)}\s+{re.escape(value)}\s*$", doc, re.M)]
    for name in missing:
        print(f"noise_vectors.py: {sys.argv[2]} lacks or differs at {name!r}", file=sys.stderr)
    if missing:
        sys.exit(1)
    print(f"ok: {len(vs)} v2 draft vectors in {sys.argv[2]}")


if __name__ == "__main__":
    main()
