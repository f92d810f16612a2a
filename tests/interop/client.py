#!/usr/bin/env python3
"""An independent Tether client: framing and postcard by hand from
docs/PROTOCOL.md (tether_wire.py), every SCRAM message and check from
`scramp` (pip). It logs in, verifies the server signature, runs calls over
authenticated session frames and prints one JSON object describing what
happened on stdout (the Rust test in tests/tests/interop.rs reads it).

    client.py --port 7420 --user alice --password alice-password --echo hi --whoami

Exit status: 0 when the conversation followed the protocol (a login or a
clean refusal), 2 when the server broke the protocol, 3 when the server
signature was wrong (impostor).

scramp applies SASLprep to the password, which Tether does not: with a
non-ASCII password this client may compute a different key. Use ASCII
passwords (SASLprep is a no-op on them).
"""

import argparse
import base64
import hashlib
import hmac
import json
import sys
import time

import scramp

import tether_wire as w

HASHES = {w.SCRAM_SHA_256: hashlib.sha256, w.SCRAM_SHA_1: hashlib.sha1}


def scram_attrs(message):
    """`k=v,...` -> dict (for reporting the challenge; scramp parses for real)."""
    return dict(part.split("=", 1) for part in message.split(",") if "=" in part)


class Session:
    def __init__(self, sock, client_key, auth_msg, server_max, client_max, report):
        k_c2s, k_s2c = w.session_keys(client_key, auth_msg)
        self.sock, self.tx, self.rx = sock, w.Sealer(k_c2s), w.Opener(k_s2c)
        self.server_max, self.client_max = server_max, client_max
        self.report = report
        self.next_id = 1
        self.started = time.monotonic()

    def send(self, message, corrupt_tag=False):
        body = self.tx.seal(message)
        if len(body) > self.server_max:
            raise w.ProtocolViolation(f"would send {len(body)} bytes, server max {self.server_max}")
        if corrupt_tag:
            body = body[:-1] + bytes([body[-1] ^ 1])
        self.sock.sendall(w.frame(body))

    def receive(self):
        """Next message from the server, answering pings and the server's
        calls on the way (the device side of the built-in methods)."""
        while True:
            tag, m = self.rx.open(w.recv_frame(self.sock, self.client_max))
            self.report["s2c_frames"] += 1
            if tag == w.PING:
                self.send(w.encode_pong(m["nonce"]))
            elif tag == w.CALL:
                self.report["server_calls"].append(m["method"])
                if m["method"] == "device_info":
                    uptime = int(time.monotonic() - self.started)
                    self.send(w.encode_reply(m["id"], w.encode_device_info("tether-interop-python", uptime)))
                else:
                    self.send(w.encode_error(m["id"], w.UNKNOWN_METHOD, "no such method"))
            elif tag == w.NOTIFY:
                self.report["server_notifies"].append(m["method"])
            else:
                return tag, m

    def call(self, method, args):
        call_id = self.next_id
        self.next_id += 1
        self.send(w.encode_call(call_id, method, args))
        tag, m = self.receive()
        if tag == w.GOODBYE:
            raise w.ProtocolViolation(f"server said goodbye ({m['reason_name']}) instead of answering {method}")
        if tag not in (w.REPLY, w.ERROR) or m["id"] != call_id:
            raise w.ProtocolViolation(f"expected the answer to call {call_id}, got {tag} {m}")
        if tag == w.ERROR:
            return {"error": {"code": m["code"], "message": m["message"]}}
        return {"result": m["result"]}

    def ping(self, nonce):
        self.send(w.encode_ping(nonce))
        tag, m = self.receive()
        if tag != w.PONG or m["nonce"] != nonce:
            raise w.ProtocolViolation(f"expected Pong({nonce}), got {tag} {m}")

    def goodbye(self):
        self.send(w.encode_goodbye(0))
        # Goodbye is our last frame; the server may answer with its own
        # goodbye or just close.
        try:
            tag, m = self.receive()
            self.report["after_goodbye"] = m.get("reason_name", tag)
            w.recv_frame(self.sock, self.client_max)
            self.report["after_goodbye_extra"] = True
        except w.PeerClosed:
            pass


def login(args, report):
    sock = w.connect(args.host, args.port, args.timeout)
    password = args.password
    first = scramp.ScramClient(["SCRAM-SHA-256"], args.user, password, c_nonce=args.nonce)
    client_first = first.get_client_first()
    hello = w.encode_hello(args.mechanisms, args.max_frame, client_first, version=args.version)
    sock.sendall(w.frame(hello))
    report["client_first"] = client_first

    body = w.recv_frame(sock, w.PRE_LOGIN_MAX)
    tag, m = w.decode_handshake(body)
    if tag == w.REFUSED:
        return refused(sock, report, "hello", body, m)
    if tag != w.CHALLENGE:
        raise w.ProtocolViolation(f"expected Challenge or Refused after Hello, got {tag}")
    mechanism = m["mechanism"]
    if not args.mechanisms & w.MECHANISM_BITS[mechanism]:
        raise w.ProtocolViolation(f"server chose {w.MECHANISM_NAMES[mechanism]}, not offered")
    if mechanism == w.SCRAM_SHA_256:
        client = first
    else:
        # Same client-first-message (the nonce is ours), other hash.
        client = scramp.ScramClient(["SCRAM-SHA-1"], args.user, password, c_nonce=str(first.c_nonce))
        if client.get_client_first() != client_first:
            raise AssertionError("scramp made a different client-first for SHA-1")
    server_first = m["server_first"]
    attrs = scram_attrs(server_first)
    report["challenge"] = {
        "mechanism": w.MECHANISM_NAMES[mechanism],
        "iterations": int(attrs["i"]),
        "salt_len": len(base64.b64decode(attrs["s"])),
        "server_nonce_len": len(attrs["r"]) - len(str(first.c_nonce)),
        "frame_len": len(body),
    }
    client.set_server_first(server_first)  # scramp checks the nonce and i >= 4096
    client_final = client.get_client_final()  # scramp runs PBKDF2 and the proof
    if args.corrupt_proof:
        head, proof = client_final.rsplit(",p=", 1)
        raw = bytearray(base64.b64decode(proof))
        raw[0] ^= 1
        client_final = head + ",p=" + base64.b64encode(bytes(raw)).decode()
    sock.sendall(w.frame(w.encode_proof(client_final)))

    body = w.recv_frame(sock, w.PRE_LOGIN_MAX)
    tag, m = w.decode_handshake(body)
    if tag == w.REFUSED:
        return refused(sock, report, "proof", body, m)
    if tag != w.WELCOME:
        raise w.ProtocolViolation(f"expected Welcome or Refused after Proof, got {tag}")
    try:
        client.set_server_final(m["server_final"])  # scramp checks ServerSignature
    except scramp.ScramException as e:
        report["outcome"] = "impostor"
        report["error"] = str(e)
        sock.close()
        return None
    report["server_signature_verified"] = True
    if not w.MIN_MAX_FRAME <= m["max_frame"]:
        raise w.ProtocolViolation(f"server max_frame {m['max_frame']} below 512")
    report["outcome"] = "welcome"
    report["welcome"] = {k: m[k] for k in ("session_id", "max_frame", "heartbeat_secs")}

    # Session keys need ClientKey, which scramp keeps to itself: recompute it
    # from the password (hashlib PBKDF2, the RFC 5802 definitions) and check
    # it against the proof scramp sent, which also proves that AuthMessage
    # is the one scramp signed.
    hf = HASHES[mechanism]
    salted = hashlib.pbkdf2_hmac(hf().name, password.encode("utf-8"), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hf).digest()
    auth_msg = w.auth_message(client_first[3:], server_first, client_final)
    signature = hmac.new(hf(client_key).digest(), auth_msg, hf).digest()
    proof = base64.b64decode(client_final.rsplit(",p=", 1)[1])
    if bytes(a ^ b for a, b in zip(client_key, signature)) != proof:
        raise AssertionError("recomputed ClientKey/AuthMessage do not match scramp's proof")
    return Session(sock, client_key, auth_msg, m["max_frame"], args.max_frame, report)


def refused(sock, report, after, body, m):
    report["outcome"] = "refused"
    report["refused"] = {"after": after, "code": m["code_name"], "retry_after_secs": m["retry_after_secs"]}
    report["refused_frame_hex"] = w.frame(body).hex()
    # The refusal is the server's last frame: it closes the connection.
    try:
        extra = w.recv_frame(sock, w.PRE_LOGIN_MAX)
        raise w.ProtocolViolation(f"frame after Refused: {extra.hex()}")
    except w.PeerClosed:
        report["closed_after_refusal"] = True
    sock.close()
    return None


def run(args, report):
    session = login(args, report)
    if session is None:
        return
    calls = report["calls"]
    for text in args.echo:
        answer = session.call("echo", w.string(text))
        if "result" in answer:
            got = w.decode_string(answer["result"])
            if got != text:
                raise w.ProtocolViolation(f"echo {text!r} came back {got!r}")
            calls.append({"method": "echo", "result": got})
        else:
            calls.append({"method": "echo", **answer})
    if args.whoami:
        answer = session.call("whoami", b"")
        if "result" in answer:
            who = w.decode_whoami(answer["result"])
            calls.append({"method": "whoami", "result": who})
            if who["session_id"] != report["welcome"]["session_id"]:
                raise w.ProtocolViolation(f"whoami session_id {who['session_id']} != welcome's")
        else:
            calls.append({"method": "whoami", **answer})
    for method in args.call:
        calls.append({"method": method, **hexed(session.call(method, b""))})
    if args.ping:
        session.ping(0xC0FFEE)
        report["pong"] = True
    if args.bad_tag:
        # A frame with a wrong tag must end the session: the server closes
        # (perhaps after a Goodbye) and never answers the call.
        session.send(w.encode_call(session.next_id, "echo", w.string("tampered")), corrupt_tag=True)
        try:
            tag, m = session.receive()
            report["after_bad_tag"] = m.get("reason_name", tag)
            w.recv_frame(session.sock, session.client_max)
            raise w.ProtocolViolation("server kept talking after a bad tag")
        except w.PeerClosed:
            report["closed_after_bad_tag"] = True
        except ConnectionResetError:
            report["closed_after_bad_tag"] = True
        return
    session.goodbye()
    report["c2s_frames"] = session.tx.seq
    session.sock.close()


def hexed(answer):
    if "result" in answer:
        return {"result_hex": answer["result"].hex()}
    return answer


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--mechanisms", type=int, default=3, help="Hello bit set: 1 SHA-256, 2 SHA-1")
    p.add_argument("--max-frame", type=int, default=4096)
    p.add_argument("--version", type=int, default=w.PROTOCOL_VERSION)
    p.add_argument("--nonce", help="client nonce (default: scramp's)")
    p.add_argument("--echo", action="append", default=[], help="call echo with this text")
    p.add_argument("--whoami", action="store_true")
    p.add_argument("--call", action="append", default=[], help="call this method with () args")
    p.add_argument("--ping", action="store_true")
    p.add_argument("--bad-tag", action="store_true", help="end with a frame whose tag is wrong")
    p.add_argument("--corrupt-proof", action="store_true", help="flip a bit of scramp's proof")
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    report = {"outcome": None, "calls": [], "s2c_frames": 0, "server_calls": [], "server_notifies": []}
    status = 0
    try:
        run(args, report)
        if report["outcome"] == "impostor":
            status = 3
    except (w.ProtocolViolation, scramp.ScramException, ConnectionError, TimeoutError, OSError) as e:
        report["outcome"] = report["outcome"] or "error"
        report["error"] = f"{type(e).__name__}: {e}"
        status = 2
    json.dump(report, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
