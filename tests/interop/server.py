#!/usr/bin/env python3
"""A small independent Tether server: framing and postcard by hand from
docs/PROTOCOL.md (tether_wire.py), the SCRAM exchange from `scramp`'s
ScramServer. It serves the handshake and a session answering `echo`,
`whoami` and pings, so that tether-core's client can be tested against a
SCRAM implementation nobody here wrote.

    server.py --port 0 --django-users fixtures/django/users.json --scramp-user carl:carl-pw

Prints `LISTENING <port>` on stdout once bound, then logs one line per event
on stderr. Users come from a users.json manifest (Django-made rows: the
SCRAM keys are derived from the row's hash like a Tether server does, no
PBKDF2) and/or are made by scramp itself (`make_auth_info`, 4096
iterations). As docs/PROTOCOL.md requires, only a hello offering no
mechanism this server runs is refused `unsupported`; an unknown user, or a
user whose mechanism the client did not offer, gets a decoy challenge in an
offered mechanism (a known user's decoy keeps the row's salt and count) and
is refused `unauthorized` after the proof, like a wrong password.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import socketserver
import sys
import threading

import scramp

import tether_wire as w

MECH_OF_ALGORITHM = {"pbkdf2_sha256": w.SCRAM_SHA_256, "pbkdf2_sha1": w.SCRAM_SHA_1}
HASHES = {w.SCRAM_SHA_256: hashlib.sha256, w.SCRAM_SHA_1: hashlib.sha1}
SECRET = os.urandom(32)
DECOY_ITERATIONS = 4096


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


class User:
    def __init__(self, user_id, username, mechanism, salt, iterations, stored_key, server_key, is_superuser=False):
        self.user_id, self.username, self.mechanism = user_id, username, mechanism
        self.salt, self.iterations = salt, iterations
        self.stored_key, self.server_key = stored_key, server_key
        self.is_superuser = is_superuser

    def auth_info(self):
        return self.salt, self.stored_key, self.server_key, self.iterations


def from_django_row(user_id, username, encoded, is_superuser):
    """`pbkdf2_sha256$<i>$<salt>$<b64>`: the base64 is SaltedPassword, the
    SCRAM salt is the salt string's bytes (DESIGN.md)."""
    algorithm, iterations, salt, b64 = encoded.split("$")
    mechanism = MECH_OF_ALGORITHM[algorithm]
    hf = HASHES[mechanism]
    salted = base64.b64decode(b64)
    client_key = hmac.new(salted, b"Client Key", hf).digest()
    server_key = hmac.new(salted, b"Server Key", hf).digest()
    return User(user_id, username, mechanism, salt.encode(), int(iterations), hf(client_key).digest(), server_key, is_superuser)


def from_scramp(user_id, username, password, mechanism):
    salt, stored_key, server_key, i = scramp.ScramMechanism(w.MECHANISM_NAMES[mechanism]).make_auth_info(
        password, iteration_count=DECOY_ITERATIONS
    )
    return User(user_id, username, mechanism, salt, i, stored_key, server_key)


def decoy(username, users):
    """Salt and keys from a server secret and the username: stable per name,
    indistinguishable from a real row without the secret. Its mechanism is
    drawn by the secret with the share the users have (SHA-1 users among
    all), so decoys are spread like real rows."""
    d = hmac.new(SECRET, username.encode(), hashlib.sha256).digest()
    sha1 = sum(1 for u in users.values() if u.mechanism == w.SCRAM_SHA_1)
    draw = int.from_bytes(d[16:20], "big") % max(len(users), 1)
    mechanism = w.SCRAM_SHA_1 if draw < sha1 else w.SCRAM_SHA_256
    return User(0, username, mechanism, base64.b64encode(d[:16]), DECOY_ITERATIONS,
                HASHES[mechanism](d).digest(), hmac.new(d, b"server", HASHES[mechanism]).digest())


def decoy_in(user, mechanism):
    """A user's decoy in another mechanism: the row's salt and count, keys
    that no proof matches."""
    d = hmac.new(SECRET, b"keys\0" + user.username.encode(), hashlib.sha256).digest()
    hf = HASHES[mechanism]
    return User(0, user.username, mechanism, user.salt, user.iterations,
                hf(d).digest(), hmac.new(d, b"server", hf).digest())


def username_of(client_first):
    """Only to pick the mechanism before scramp runs (scramp needs it up
    front); scramp parses the message again and must agree."""
    bare = client_first.split(",", 2)[2]
    for part in bare.split(","):
        if part.startswith("n="):
            return part[2:].replace("=2C", ",").replace("=3D", "=")
    raise ValueError("no n=")


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        cfg = self.server.cfg
        sock = self.request
        sock.settimeout(cfg.timeout)
        peer = "%s:%d" % self.client_address
        try:
            self.conversation(sock, peer)
        except w.PeerClosed:
            log(peer, "closed")
        except (w.ProtocolViolation, ValueError, KeyError, UnicodeError) as e:
            log(peer, "protocol violation:", e)
        except (OSError, TimeoutError) as e:
            log(peer, "connection error:", e)

    def refuse(self, sock, peer, code, why):
        log(peer, "refused", w.REFUSAL_NAMES[code], "-", why)
        sock.sendall(w.frame(w.encode_refused(code, 0)))

    def conversation(self, sock, peer):
        cfg = self.server.cfg
        try:
            tag, hello = w.decode_handshake(w.recv_frame(sock, w.PRE_LOGIN_MAX))
        except w.ProtocolViolation as e:
            return self.refuse(sock, peer, w.PROTOCOL, str(e))
        if tag != w.HELLO:
            return self.refuse(sock, peer, w.PROTOCOL, f"expected Hello, got {tag}")
        if hello["version"] != w.PROTOCOL_VERSION:
            return self.refuse(sock, peer, w.VERSION, f"version {hello['version']}")
        if hello["max_frame"] < w.MIN_MAX_FRAME:
            return self.refuse(sock, peer, w.PROTOCOL, f"max_frame {hello['max_frame']}")
        client_first = hello["client_first"]
        try:
            name = username_of(client_first)
        except (ValueError, IndexError) as e:
            return self.refuse(sock, peer, w.PROTOCOL, f"client-first: {e}")
        offered = [m for m in (w.SCRAM_SHA_256, w.SCRAM_SHA_1) if hello["mechanisms"] & w.MECHANISM_BITS[m]]
        if not offered:
            return self.refuse(sock, peer, w.UNSUPPORTED, f"no mechanism this server runs: {hello['mechanisms']:#04x}")
        user = cfg.users.get(name)
        known = user is not None
        if not known:
            user = decoy(name, cfg.users)
        if user.mechanism not in offered:
            log(peer, "decoy:", name, "needs", w.MECHANISM_NAMES[user.mechanism])
            user, known = decoy_in(user, offered[0]), False

        seen = []

        def auth_fn(username):
            seen.append(username)
            return user.auth_info()

        server = scramp.ScramMechanism(w.MECHANISM_NAMES[user.mechanism]).make_server(auth_fn)
        try:
            server.set_client_first(client_first)
            server_first = server.get_server_first()
        except scramp.ScramException as e:
            return self.refuse(sock, peer, w.PROTOCOL, f"scramp: {e}")
        if seen != [name]:
            return self.refuse(sock, peer, w.PROTOCOL, f"scramp read username {seen}, we read {name!r}")
        sock.sendall(w.frame(w.encode_challenge(user.mechanism, server_first)))

        tag, proof = w.decode_handshake(w.recv_frame(sock, w.PRE_LOGIN_MAX))
        if tag != w.PROOF:
            return self.refuse(sock, peer, w.PROTOCOL, f"expected Proof, got {tag}")
        client_final = proof["client_final"]
        try:
            server.set_client_final(client_final)
            server_final = server.get_server_final()
        except scramp.ScramException as e:
            return self.refuse(sock, peer, w.UNAUTHORIZED, f"{name}: scramp: {e}")
        if not known:
            # scramp cannot accept a proof against random keys; be sure.
            return self.refuse(sock, peer, w.UNAUTHORIZED, f"{name}: unknown user")
        if cfg.impostor:
            sig = bytearray(base64.b64decode(server_final[2:]))
            sig[0] ^= 1
            server_final = "v=" + base64.b64encode(bytes(sig)).decode()

        # The server recovers ClientKey as ClientProof XOR ClientSignature.
        hf = HASHES[user.mechanism]
        auth_msg = w.auth_message(client_first.split(",", 2)[2], server_first, client_final)
        signature = hmac.new(user.stored_key, auth_msg, hf).digest()
        client_proof = base64.b64decode(client_final.rsplit(",p=", 1)[1])
        client_key = bytes(a ^ b for a, b in zip(client_proof, signature))
        assert hf(client_key).digest() == user.stored_key, "scramp accepted a proof we cannot"
        k_c2s, k_s2c = w.session_keys(client_key, auth_msg)

        with self.server.lock:
            self.server.next_session += 1
            session_id = self.server.next_session
        sock.sendall(w.frame(w.encode_welcome(server_final, session_id, cfg.max_frame, cfg.heartbeat)))
        log(peer, "welcome", name, w.MECHANISM_NAMES[user.mechanism], "session", session_id)
        self.session(sock, peer, user, session_id, w.Sealer(k_s2c), w.Opener(k_c2s), hello["max_frame"])

    def session(self, sock, peer, user, session_id, tx, rx, client_max):
        cfg = self.server.cfg

        def send(message):
            body = tx.seal(message)
            if len(body) > client_max:
                raise w.ProtocolViolation(f"reply of {len(body)} bytes above the client's {client_max}")
            sock.sendall(w.frame(body))

        while True:
            body = w.recv_frame(sock, cfg.max_frame)
            try:
                tag, m = rx.open(body)
            except w.ProtocolViolation as e:
                # A bad tag, replay or reordering closes the session at once.
                log(peer, "closing:", e)
                return
            if tag == w.CALL:
                method, args = m["method"], m["args"]
                if method == "echo":
                    try:
                        w.decode_string(args)
                    except w.ProtocolViolation:
                        send(w.encode_error(m["id"], w.BAD_ARGUMENTS, "echo takes a string"))
                        continue
                    send(w.encode_reply(m["id"], args))
                elif method == "whoami":
                    send(w.encode_reply(m["id"], w.encode_whoami(user.user_id, user.username, session_id, user.is_superuser)))
                else:
                    send(w.encode_error(m["id"], w.UNKNOWN_METHOD, "no such method"))
                log(peer, "call", method)
            elif tag == w.PING:
                send(w.encode_pong(m["nonce"]))
            elif tag == w.NOTIFY or tag == w.PONG:
                pass
            elif tag == w.GOODBYE:
                log(peer, "goodbye", m["reason_name"])
                return
            else:  # Reply/Error: this server never calls, so no id is in flight.
                send(w.encode_goodbye(4))
                log(peer, "closing: answer to a call never made")
                return


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--django-users", help="users.json manifest (fixtures/django)")
    p.add_argument("--database", default="default.sqlite3", help="which database of the manifest")
    p.add_argument("--scramp-user", action="append", default=[], metavar="NAME:PASSWORD[:sha1]")
    p.add_argument("--max-frame", type=int, default=4096)
    p.add_argument("--heartbeat", type=int, default=30)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--impostor", action="store_true", help="send a wrong server signature")
    cfg = p.parse_args()
    cfg.users = {}
    if cfg.django_users:
        with open(cfg.django_users, encoding="utf-8") as f:
            manifest = json.load(f)
        for u in manifest["databases"][cfg.database]["users"]:
            if u.get("algorithm") in MECH_OF_ALGORITHM and u["is_active"] and u["has_connect_perm"]:
                cfg.users[u["username"]] = from_django_row(u["id"], u["username"], u["password_hash"], u["is_superuser"])
    for i, spec in enumerate(cfg.scramp_user):
        name, password, *rest = spec.split(":")
        mech = w.SCRAM_SHA_1 if rest == ["sha1"] else w.SCRAM_SHA_256
        cfg.users[name] = from_scramp(10_000 + i, name, password, mech)

    server = Server((cfg.host, cfg.port), Handler)
    server.cfg, server.lock, server.next_session = cfg, threading.Lock(), 0
    print("LISTENING", server.server_address[1], flush=True)
    log("users:", ", ".join(sorted(cfg.users)))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
