#!/usr/bin/env python3
"""Writes the checked-in seed corpus fuzz/seeds/<target>/ (standard library
only). Frames and session bodies are the vectors of docs/PROTOCOL.md, read
from the document itself; the input layouts are those documented at the top
of each fuzz_targets/*.rs. Rerun after changing a layout:

    python3 fuzz/make_seeds.py
"""

import hashlib
import pathlib
import re
import shutil

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEEDS = ROOT / "fuzz" / "seeds"
DOC = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")

CLIENT_FIRST = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
CLIENT_FINAL = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
SEP = b"\xff"


def doc_hex(marker):
    i = DOC.index(marker) + len(marker)
    return bytes.fromhex(re.compile(r"\b([0-9a-f]{10,})\b").search(DOC, i).group(1))


FRAMES = {
    name: doc_hex(marker)
    for name, marker in [
        ("hello", "Hello {"),
        ("challenge", "Challenge {"),
        ("proof", "Proof {"),
        ("welcome", "Welcome {"),
        ("refused", "Refused { unauthorized, 0 }"),
        ("throttled", "Refused { throttled, 300 }"),
        ("c2s0", "c2s seq 0"),
        ("s2c0", "s2c seq 0"),
        ("s2c1", "s2c seq 1"),
        ("c2s1", "c2s seq 1"),
    ]
}


def body(name):
    return FRAMES[name][2:]


def t(s):
    return s.encode("utf-8")


def frame_decoder():
    f = FRAMES
    handshake = f["hello"] + f["challenge"] + f["proof"] + f["welcome"]
    session = f["c2s0"] + f["s2c0"] + f["s2c1"] + f["c2s1"]
    return {
        "hello": b"\x00\x00" + f["hello"],
        "handshake_flow": b"\x03\x00" + handshake + f["refused"],
        "session_frames": b"\x05\x01" + session,
        "one_byte_chunks": b"\x00\x02" + handshake + session,
        "empty_frame": b"\x00\x00" + f["hello"] + b"\x00\x00",
        "too_long": b"\x00\x00\x02\x01" + b"x" * 16,
        "truncated": b"\x01\x01" + f["welcome"][:-3],
        "small_max": b"\x02\x07" + f["refused"] + f["throttled"] + b"\x00\x30" + b"a" * 48,
    }


def handshake():
    seeds = {}
    for name in ["hello", "challenge", "proof", "welcome", "refused", "throttled"]:
        seeds[f"0_{name}"] = b"\x00\x00" + body(name)
    seeds["0_challenge_sha1"] = b"\x00\x00" + b"\x01\x01" + body("challenge")[2:]
    server = [
        (CLIENT_FIRST, "srv", CLIENT_FINAL),
        ("y,,n=user,r=rOprNGfwEbeRWgbNEkqO", "xyz", "c=eSws,r=rOprNGfwEbeRWgbNEkqOxyz,p=AAAA"),
        ("n,,n=o=2Cdd=3Dname,r=abc", "def", "c=biws,r=abcdef,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
        ("p=tls-unique,,n=user,r=x", "y", "c=biws,r=xy,p=AA=="),
        ("n,a=admin,n=user,r=x", "y", "c=biws,r=xy,p=AA=="),
        ("n,,m=ext,n=user,r=x", "y", "c=biws,r=xy,p=AA=="),
        ("n,,n=z\u00f6e,r=" + "A" * 64, "B" * 64, "c=biws,r=" + "A" * 64 + "B" * 64 + ",p=AA=="),
    ]
    for i, (cf, nonce, cfin) in enumerate(server):
        seeds[f"1_server_{i}"] = b"\x01\x00" + t(cf) + SEP + t(nonce) + SEP + t(cfin)
    client = [
        (0, SERVER_FIRST, SERVER_FINAL),
        (1, "r=rOprNGfwEbeRWgbNEkqOabc,s=QSXCR+Q6sek8bf92,i=16", "v=AAAA"),
        (3, "r=rOprNGfwEbeRWgbNEkqOabc,s=QSXCR+Q6sek8bf92,i=16", "e=invalid-proof"),
        (0, "r=rOprNGfwEbeRWgbNEkqOabc,s=QSXCR+Q6sek8bf92,i=4096,x=ext", SERVER_FINAL),
        (1, "m=mandatory,r=rOprNGfwEbeRWgbNEkqOabc,s=QQ==,i=1", "v=x"),
        (0, "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", SERVER_FINAL),
    ]
    for i, (flags, sf, sfin) in enumerate(client):
        seeds[f"2_client_{i}"] = bytes([2, flags]) + t(sf) + SEP + t(sfin)
    for i, cfin in enumerate([
        CLIENT_FINAL,
        CLIENT_FINAL.replace("p=dHzb", "p=dHzc"),
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=!!!!",
        "c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "c=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,x=1,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    ]):
        seeds[f"3_verify_{i}"] = b"\x03\x00" + t(cfin)
    for i, sfin in enumerate([SERVER_FINAL, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G5=", "e=invalid-proof", SERVER_FINAL + ",x=ext", "v="]):
        seeds[f"4_server_final_{i}"] = b"\x04\x00" + t(sfin)
    for i, row in enumerate([
        "pbkdf2_sha256$4096$W8ZxHXvUYrZMB2ce3tJeqs$Gf7trYHHXjQXenT0TXmV2mr2SsIdi492WLVThfHnB/k=",
        "pbkdf2_sha1$1000000$BKm2OBEbOcSJtNh8TdWdOy$2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
        "argon2$argon2id$v=19$m=102400,t=2,p=8$c29tZXNhbHQ$c29tZWhhc2g",
        "bcrypt_sha256$$2b$12$abcdefghijklmnopqrstuv",
        "scrypt$16384$salt$8$1$aGFzaA==",
        "md5$salt$0123456789abcdef0123456789abcdef",
        "!unusablepasswordXXXXXXXXXXXXXXXXXXXXXXX",
        "pbkdf2_sha256$0$s$AAAA",
        "pbkdf2_sha256$99999999999$s$AAAA",
    ]):
        seeds[f"5_django_{i}"] = b"\x05\x00" + t(row)
    return seeds


def session():
    call = body("c2s0")[8:-16]  # 00 01 04 echo 03 02 68 69
    goodbye = body("c2s1")[8:-16]
    ping = b"\x04\x07"
    err = body("s2c1")[8:-16]

    def rec(op, payload):
        return bytes([op, len(payload)]) + payload

    return {
        "genuine_doc_frames": rec(1, body("c2s0")) + rec(1, body("c2s1")),
        "authentic_flow": rec(0, call) + rec(0, ping) + rec(0, goodbye),
        "replay_and_reorder": rec(0, call) + rec(4, call) + rec(8, call) + rec(0, ping),
        "explicit_seq": rec(12, (0).to_bytes(8, "big") + call) + rec(12, (5).to_bytes(8, "big") + ping),
        "mutations": rec(0, call) + rec(2, b"\x01") + rec(6, b"\x09") + rec(0, ping),
        "sealed": rec(3, call) + rec(3, err) + rec(3, goodbye) + rec(1, body("c2s1")),
        "garbage_authentic": rec(0, b"\xff\xff") + rec(0, b"\x00\x01") + rec(0, b"") + rec(0, call + b"\x00"),
        "other_direction": rec(1, body("s2c0")) + rec(1, body("s2c1")),
    }


def varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def server_connection():
    """tether-core's ServerHandshake/ServerConnection in memory (layout in
    fuzz_targets/server_connection.rs)."""

    def string(b):
        b = t(b) if isinstance(b, str) else b
        return varint(len(b)) + b

    def frame(b):
        return len(b).to_bytes(2, "big") + b

    def hello(client_first, version=1, mechanisms=3, max_frame=4096):
        return frame(b"\x00" + bytes([version, mechanisms]) + varint(max_frame) + string(client_first))

    def rec(op, payload):
        return bytes([op, len(payload)]) + payload

    call = lambda i, m, a: b"\x00" + varint(i) + string(m) + string(a)
    f = FRAMES
    raw = {
        "raw_doc_hello": (0, f["hello"]),
        "raw_doc_hello_proof": (2, f["hello"] + f["proof"]),
        "raw_sha1user_hello": (4, hello("n,,n=sha1user,r=fuzzfuzzfuzzfuzz", mechanisms=1)),
        "raw_unknown_hello_proof": (0, hello("n,,n=nobody,r=abc") + frame(b"\x02" + string("c=biws,r=abcdef,p=AAAA"))),
        "raw_version_2": (0, hello("n,,n=user,r=abc", version=2)),
        "raw_small_max": (6, hello("n,,n=user,r=abc", max_frame=100)),
        "raw_no_mechanism": (0, hello("n,,n=user,r=abc", mechanisms=4)),
        "raw_escaped": (0, hello("n,,n=o=2Cdd=3Dname,r=abc")),
        "raw_channel_binding": (0, hello("p=tls-unique,,n=user,r=abc")),
        "raw_zero_len": (0, b"\x00\x00"),
        "raw_too_long": (0, b"\x02\x01" + b"A" * 32),
        "raw_truncated": (0, f["hello"][:20]),
        "raw_session_frame_first": (0, f["c2s0"]),
        "raw_bytewise": (16, f["hello"] + f["proof"]),
    }
    seeds = {name: bytes([mode]) + data for name, (mode, data) in raw.items()}
    session_seeds = {
        "session_calls": rec(0, call(1, "echo", b"\x02hi")) + rec(0, call(2, "whoami", b""))
        + rec(0, call(3, "n" * 200, b"")),
        "session_ping_unknown": rec(0, b"\x04\x2a") + rec(0, call(9, "no_such_method", b"")),
        "session_server_calls": rec(3, b"\x01x") + rec(4, b"\x01y") + rec(3, b"") + rec(12, b""),
        "session_hold": rec(0, call(5, "hold", b"")) + rec(0, call(6, "hold", b"")) + rec(0, call(7, "hold", b""))
        + rec(0, call(8, "hold", b"")) + rec(8, b"\x01") + rec(0, call(5, "echo", b"")),
        "session_idle": rec(2, b"\x28") + rec(2, b"\x28") + rec(2, b"\x28"),
        "session_unknown_reply": rec(0, b"\x01\x63\x00"),
        "session_notify_goodbye": rec(0, b"\x03" + string("news") + string(b"\x00")) + rec(0, b"\x06\x00"),
        "session_bogus_tag": rec(0, b"\xff" * 30),
        "session_raw_garbage": rec(1, b"\x00\x05hello"),
        "session_zero_len": rec(1, b"\x00\x00"),
        "session_many_calls": b"".join(rec(0, call(i, "echo", b"\x01a")) for i in range(40)),
    }
    seeds.update({name: b"\x01" + data for name, data in session_seeds.items()})
    return seeds


def server_tcp():
    def varint(n):
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def string(b):
        b = t(b) if isinstance(b, str) else b
        return varint(len(b)) + b

    def frame(b):
        return len(b).to_bytes(2, "big") + b

    def hello(client_first, version=1, mechanisms=3, max_frame=4096):
        return frame(b"\x00" + bytes([version, mechanisms]) + varint(max_frame) + string(client_first))

    def rec(op, payload):
        return bytes([op, len(payload)]) + payload

    call = lambda i, m, a: b"\x00" + varint(i) + string(m) + string(a)
    f = FRAMES
    raw = {
        "raw_doc_hello": f["hello"],
        "raw_doc_hello_proof": f["hello"] + f["proof"],
        "raw_alice_hello": hello("n,,n=alice,r=fuzzfuzzfuzzfuzzfuzzfuzz"),
        "raw_alice_hello_proof": hello("n,,n=alice,r=abc") + frame(b"\x02" + string("c=biws,r=abcdef,p=AAAA")),
        "raw_version_2": hello("n,,n=alice,r=abc", version=2),
        "raw_small_max": hello("n,,n=alice,r=abc", max_frame=100),
        "raw_sha1_only_for_alice": hello("n,,n=alice,r=abc", mechanisms=2),
        "raw_escaped": hello("n,,n=o=2Cdd=3Dname,r=abc"),
        "raw_channel_binding": hello("p=tls-unique,,n=alice,r=abc"),
        "raw_zero_len": b"\x00\x00",
        "raw_too_long": b"\x02\x01" + b"A" * 32,
        "raw_truncated": f["hello"][:20],
        "raw_session_frame_first": f["c2s0"],
    }
    seeds = {name: b"\x00" + data for name, data in raw.items()}
    session_seeds = {
        "session_calls": rec(0, call(1, "echo", b"\x02hi")) + rec(0, call(2, "whoami", b""))
        + rec(0, call(3, "server_time", b"")) + rec(2, b""),
        "session_ping_unknown": rec(0, b"\x04\x2a") + rec(0, call(9, "no_such_method", b"")) + rec(2, b""),
        "session_device_info": rec(2, b"") + rec(3, b"\x04fuzz\x07") + rec(7, b"") + rec(0, call(4, "echo", b"\x01x")),
        "session_bad_args": rec(0, call(5, "echo", b"\xff\xff")) + rec(0, call(6, "whoami", b"\x00")) + rec(2, b""),
        "session_unknown_reply": rec(0, b"\x01\x63\x00") + rec(2, b""),
        "session_notify_goodbye": rec(0, b"\x03" + string("news") + string(b"\x00")) + rec(0, b"\x06\x00"),
        "session_bogus_tag": rec(0, b"\xff" * 30) + rec(2, b""),
        "session_raw_garbage": rec(1, b"\x00\x05hello") + rec(2, b""),
        "session_many_calls": b"".join(rec(0, call(i, "echo", b"\x01a")) for i in range(40)) + rec(2, b""),
    }
    seeds.update({name: b"\x01" + data for name, data in session_seeds.items()})
    return seeds


def noise_handshake():
    """`[mode] message`: the v2 draft's handshake messages and sealed frame
    (docs/PROTOCOL.md v2.8), each in the mode that reads it, and cut short."""
    v2 = {
        name: bytes.fromhex(m.group(1))
        for name in ["NK frame 1", "NK frame 2", "NN frame 1", "NN frame 2", "NK s2c seq 0 Welcome"]
        for m in [re.search(rf"^{re.escape(name)}\s+([0-9a-f]+)$", DOC, re.M)]
    }
    nk1, nn1 = v2["NK frame 1"][4:], v2["NN frame 1"][4:]
    nk2, nn2 = v2["NK frame 2"][2:], v2["NN frame 2"][2:]
    welcome = v2["NK s2c seq 0 Welcome"][2:]
    return {
        "nn_msg1": b"\x00" + nn1,
        "nn_msg1_payload": b"\x00" + nn1 + b"clear payload",
        "nk_msg1": b"\x01" + nk1,
        "nk_msg1_short": b"\x01" + nk1[:47],
        "nn_msg2": b"\x02" + nn2,
        "nk_msg2": b"\x03" + nk2,
        "nk_msg2_as_nn": b"\x02" + nk2,
        "nk_welcome": b"\x04" + welcome,
        "nk_welcome_seq1": b"\x04" + b"\x00" * 7 + b"\x01" + welcome[8:],
    }


def main():
    for target, seeds in [
        ("frame_decoder", frame_decoder()),
        ("handshake", handshake()),
        ("session", session()),
        ("server_connection", server_connection()),
        ("noise_handshake", noise_handshake()),
        ("server_tcp", server_tcp()),
    ]:
        d = SEEDS / target
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        for name, data in seeds.items():
            (d / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
