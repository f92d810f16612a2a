#!/usr/bin/env python3
"""Checks tether_wire.py (the hand-written encoding client.py and server.py
use) against the hex vectors printed in docs/PROTOCOL.md, both ways: encode
the documented values and compare bytes; decode the documented bytes and
compare values. Also checks scramp against the RFC 7677 exchange of the doc.

    vectors_check.py [path/to/PROTOCOL.md]
"""

import base64
import hashlib
import hmac
import pathlib
import re
import sys

import scramp

import tether_wire as w

CLIENT_FIRST = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SERVER_FIRST = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
CLIENT_FINAL = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def doc_hex(doc, marker):
    """The hex string printed in the doc after `marker` (same or next line)."""
    i = doc.index(marker) + len(marker)
    m = re.compile(r"\b([0-9a-f]{10,})\b").search(doc, i)
    return bytes.fromhex(m.group(1))


def doc_value(doc, name):
    m = re.search(rf"^{name}\s+(\S+)$", doc, re.M)
    return m.group(1)


def main():
    path = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parents[2] / "docs/PROTOCOL.md")
    doc = path.read_text(encoding="utf-8")
    checks = 0

    def same(what, ours, theirs):
        nonlocal checks
        if ours != theirs:
            raise SystemExit(f"MISMATCH {what}:\n  ours {ours!r}\n  doc  {theirs!r}")
        checks += 1

    # Handshake frames.
    handshake = [
        ("Hello {", w.encode_hello(3, 512, CLIENT_FIRST), (w.HELLO, {"version": 1, "mechanisms": 3, "max_frame": 512, "client_first": CLIENT_FIRST})),
        ("Challenge {", w.encode_challenge(w.SCRAM_SHA_256, SERVER_FIRST), (w.CHALLENGE, {"mechanism": 0, "server_first": SERVER_FIRST})),
        ("Proof {", w.encode_proof(CLIENT_FINAL), (w.PROOF, {"client_final": CLIENT_FINAL})),
        ("Welcome {", w.encode_welcome(SERVER_FINAL, 1, 4096, 30), (w.WELCOME, {"server_final": SERVER_FINAL, "session_id": 1, "max_frame": 4096, "heartbeat_secs": 30})),
        ("Refused { unauthorized, 0 }", w.encode_refused(w.UNAUTHORIZED, 0), (w.REFUSED, {"code": 0, "code_name": "unauthorized", "retry_after_secs": 0})),
        ("Refused { throttled, 300 }", w.encode_refused(w.THROTTLED, 300), (w.REFUSED, {"code": 2, "code_name": "throttled", "retry_after_secs": 300})),
    ]
    for marker, body, decoded in handshake:
        wire = doc_hex(doc, marker)
        same(marker + " encode", w.frame(body), wire)
        same(marker + " decode", w.decode_handshake(wire[2:]), decoded)

    # Varint examples.
    for n, hexs in [(1, "01"), (30, "1e"), (300, "ac02"), (512, "8004"), (4096, "8020")]:
        same(f"varint {n}", w.varint(n), bytes.fromhex(hexs))

    # scramp reproduces the RFC 7677 exchange the vectors carry.
    client = scramp.ScramClient(["SCRAM-SHA-256"], "user", "pencil", c_nonce="rOprNGfwEbeRWgbNEkqO")
    same("scramp client-first", client.get_client_first(), CLIENT_FIRST)
    client.set_server_first(SERVER_FIRST)
    same("scramp client-final", client.get_client_final(), CLIENT_FINAL)
    client.set_server_final(SERVER_FINAL)

    # Session keys and frames.
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    same("ClientKey", client_key.hex(), doc_value(doc, "ClientKey"))
    auth_msg = w.auth_message(CLIENT_FIRST[3:], SERVER_FIRST, CLIENT_FINAL)
    same("AuthMessage", auth_msg.decode(), doc_value(doc, "AuthMessage"))
    k = hmac.new(client_key, w.SESSION_LABEL + b"\x00" + auth_msg, hashlib.sha256).digest()
    same("K", k.hex(), doc_value(doc, "K"))
    c2s, s2c = w.session_keys(client_key, auth_msg)
    same("K_c2s", c2s.hex(), doc_value(doc, "K_c2s"))
    same("K_s2c", s2c.hex(), doc_value(doc, "K_s2c"))

    tx_c, tx_s = w.Sealer(c2s), w.Sealer(s2c)
    rx_s, rx_c = w.Opener(c2s), w.Opener(s2c)
    session = [
        ("c2s seq 0", tx_c, rx_s, w.encode_call(1, "echo", b"\x02hi"), (w.CALL, {"id": 1, "method": "echo", "args": b"\x02hi"})),
        ("s2c seq 0", tx_s, rx_c, w.encode_reply(1, b"\x02hi"), (w.REPLY, {"id": 1, "result": b"\x02hi"})),
        ("s2c seq 1", tx_s, rx_c, w.encode_error(2, w.UNKNOWN_METHOD, "no such method"), (w.ERROR, {"id": 2, "code": 1, "message": "no such method"})),
        ("c2s seq 1", tx_c, rx_s, w.encode_goodbye(0), (w.GOODBYE, {"reason": 0, "reason_name": "normal"})),
        ("s2c seq 2", tx_s, rx_c, w.encode_goodbye(7), (w.GOODBYE, {"reason": 7, "reason_name": "revoked"})),
    ]
    for marker, sealer, opener, message, decoded in session:
        wire = doc_hex(doc, marker)
        same(marker + " seal", w.frame(sealer.seal(message)), wire)
        same(marker + " open", opener.open(wire[2:]), decoded)

    # A tampered tag and a replay are refused.
    wire = doc_hex(doc, "c2s seq 0")
    for what, body, opener in [
        ("bad tag", wire[2:-1] + bytes([wire[-1] ^ 1]), w.Opener(c2s)),
        ("replay", wire[2:], rx_s),
    ]:
        try:
            opener.open(body)
        except w.ProtocolViolation:
            checks += 1
        else:
            raise SystemExit(f"{what} was accepted")
    print(f"ok: {checks} checks against {path}")


if __name__ == "__main__":
    main()
