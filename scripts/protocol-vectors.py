#!/usr/bin/env python3
"""Computes the test vectors of docs/PROTOCOL.md independently of the Rust
code (standard library only): postcard encodings written by hand from the
spec, SCRAM keys with hashlib, session keys and tags with hmac.
core/tests/vectors.rs asserts that tether-core produces the same bytes."""
import base64, hashlib, hmac, struct

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)

def string(s):
    b = s.encode() if isinstance(s, str) else s
    return varint(len(b)) + b

def frame(body):
    return struct.pack(">H", len(body)) + body

CLIENT_FIRST = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
CLIENT_FINAL = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

# Handshake enum: 0 Hello, 1 Challenge, 2 Proof, 3 Welcome, 4 Refused.
hello = frame(varint(0) + bytes([1]) + bytes([3]) + varint(512) + string(CLIENT_FIRST))
challenge = frame(varint(1) + varint(0) + string(SERVER_FIRST))
proof = frame(varint(2) + string(CLIENT_FINAL))
welcome = frame(varint(3) + string(SERVER_FINAL) + varint(1) + varint(4096) + varint(30))
refused_unauth = frame(varint(4) + varint(0) + varint(0))
refused_throttled = frame(varint(4) + varint(2) + varint(300))

# SCRAM keys of the RFC 7677 example.
salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
client_key = hmac.new(salted, b"Client Key", "sha256").digest()
auth_message = (CLIENT_FIRST[3:] + "," + SERVER_FIRST + "," + CLIENT_FINAL[: CLIENT_FINAL.rindex(",p=")]).encode()
K = hmac.new(client_key, b"tether/1 session\x00" + auth_message, "sha256").digest()
k_c2s = hmac.new(K, b"c2s", "sha256").digest()
k_s2c = hmac.new(K, b"s2c", "sha256").digest()

def session_frame(key, seq, msg):
    signed = struct.pack(">Q", seq) + msg
    return frame(signed + hmac.new(key, signed, "sha256").digest()[:16])

# Message enum: 0 Call, 1 Reply, 2 Error, 3 Notify, 4 Ping, 5 Pong, 6 Goodbye.
call = varint(0) + varint(1) + string("echo") + string(b"\x02hi")
reply = varint(1) + varint(1) + string(b"\x02hi")
error = varint(2) + varint(2) + varint(1) + string("no such method")
goodbye = varint(6) + varint(0)
# Goodbye reasons: 0 normal, 1 shutdown, 2 idle_timeout, 3 kicked,
# 4 protocol_error, 5 bad_tag, 6 replaced, 7 revoked.
goodbye_revoked = varint(6) + varint(7)

for name, value in [
    ("hello", hello), ("challenge", challenge), ("proof", proof), ("welcome", welcome),
    ("refused_unauthorized", refused_unauth), ("refused_throttled_300", refused_throttled),
    ("client_key", client_key), ("auth_message", auth_message), ("K", K), ("K_c2s", k_c2s), ("K_s2c", k_s2c),
    ("c2s_call_seq0", session_frame(k_c2s, 0, call)),
    ("s2c_reply_seq0", session_frame(k_s2c, 0, reply)),
    ("s2c_error_seq1", session_frame(k_s2c, 1, error)),
    ("c2s_goodbye_seq1", session_frame(k_c2s, 1, goodbye)),
    ("s2c_goodbye_revoked_seq2", session_frame(k_s2c, 2, goodbye_revoked)),
]:
    print(f"{name}: {value.hex() if name != 'auth_message' else value.decode()}")
