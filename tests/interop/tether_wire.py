"""Tether wire protocol v1 in plain Python, written from docs/PROTOCOL.md only.

Frames (section 1), postcard encoding (section 2), handshake and session
messages (sections 3 and 5), session keys and tags (section 5). No SCRAM here:
client.py and server.py take every SCRAM message and key from `scramp`.

Standard library only, so that nothing of tether-core leaks into this peer.
"""

import hashlib
import hmac
import socket
import struct

PROTOCOL_VERSION = 1
PRE_LOGIN_MAX = 512
MIN_MAX_FRAME = 512

# Handshake enum (section 3).
HELLO, CHALLENGE, PROOF, WELCOME, REFUSED = range(5)
# Mechanism enum inside Challenge, and the Hello bit set.
SCRAM_SHA_256, SCRAM_SHA_1 = 0, 1
MECHANISM_NAMES = {SCRAM_SHA_256: "SCRAM-SHA-256", SCRAM_SHA_1: "SCRAM-SHA-1"}
MECHANISM_BITS = {SCRAM_SHA_256: 1, SCRAM_SHA_1: 2}
# RefusalCode enum.
REFUSAL_NAMES = ["unauthorized", "unsupported", "throttled", "unavailable", "version", "protocol", "busy", "unknown_key"]
UNAUTHORIZED, UNSUPPORTED, THROTTLED, UNAVAILABLE, VERSION, PROTOCOL, BUSY, UNKNOWN_KEY = range(8)

# Message enum (section 5).
CALL, REPLY, ERROR, NOTIFY, PING, PONG, GOODBYE = range(7)
GOODBYE_NAMES = ["normal", "shutdown", "idle_timeout", "kicked", "protocol_error", "bad_tag", "replaced", "revoked"]
# Error codes.
UNKNOWN_METHOD, BAD_ARGUMENTS, FAILED = 1, 2, 3

SEQ_LEN, TAG_LEN = 8, 16
SESSION_LABEL = b"tether/1 session"


class ProtocolViolation(Exception):
    """The peer broke PROTOCOL.md (or this reading of it)."""


class PeerClosed(Exception):
    """The peer closed the connection at a frame boundary."""


# --- postcard (section 2) ------------------------------------------------


def varint(n):
    if n < 0:
        raise ValueError("varint of a negative number")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zigzag(n):
    return varint((n << 1) ^ (n >> 63))


def string(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return varint(len(b)) + b


class Reader:
    """Decodes postcard values from a body; `end()` rejects trailing bytes."""

    def __init__(self, data):
        self.data = bytes(data)
        self.pos = 0

    def u8(self):
        if self.pos >= len(self.data):
            raise ProtocolViolation("truncated message")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self, bits):
        value, shift = 0, 0
        while True:
            b = self.u8()
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift >= bits + 7:
                raise ProtocolViolation("varint too long")
        if value >> bits:
            raise ProtocolViolation(f"varint does not fit in u{bits}")
        return value

    def i64(self):
        v = self.varint(64)
        return (v >> 1) ^ -(v & 1)

    def boolean(self):
        b = self.u8()
        if b > 1:
            raise ProtocolViolation(f"bool byte {b}")
        return b == 1

    def bytes_(self):
        n = self.varint(64)
        if self.pos + n > len(self.data):
            raise ProtocolViolation("truncated bytes")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def string(self):
        try:
            return self.bytes_().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolViolation(f"invalid UTF-8: {e}") from e

    def end(self):
        if self.pos != len(self.data):
            raise ProtocolViolation(f"{len(self.data) - self.pos} trailing bytes")


# --- frames (section 1) --------------------------------------------------


def frame(body):
    if not 1 <= len(body) <= 0xFFFF:
        raise ValueError(f"frame body of {len(body)} bytes")
    return struct.pack(">H", len(body)) + body


def recv_exact(sock, n, what):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if not buf and what == "header":
                raise PeerClosed()
            raise ProtocolViolation(f"connection closed inside a frame ({what})")
        buf += chunk
    return bytes(buf)


def recv_frame(sock, max_len):
    """One frame body; a length of 0 or above `max_len` is refused from the
    two length bytes alone. Raises PeerClosed on a clean EOF."""
    (length,) = struct.unpack(">H", recv_exact(sock, 2, "header"))
    if length == 0:
        raise ProtocolViolation("frame length 0")
    if length > max_len:
        raise ProtocolViolation(f"frame length {length} above {max_len}")
    return recv_exact(sock, length, "body")


# --- handshake messages (section 3) --------------------------------------


def encode_hello(mechanism_bits, max_frame, client_first, version=PROTOCOL_VERSION):
    return varint(HELLO) + bytes([version, mechanism_bits]) + varint(max_frame) + string(client_first)


def encode_challenge(mechanism, server_first):
    return varint(CHALLENGE) + varint(mechanism) + string(server_first)


def encode_proof(client_final):
    return varint(PROOF) + string(client_final)


def encode_welcome(server_final, session_id, max_frame, heartbeat_secs):
    return varint(WELCOME) + string(server_final) + varint(session_id) + varint(max_frame) + varint(heartbeat_secs)


def encode_refused(code, retry_after_secs=0):
    return varint(REFUSED) + varint(code) + varint(retry_after_secs)


def decode_handshake(body):
    """Returns (variant, dict of fields)."""
    r = Reader(body)
    tag = r.varint(32)
    if tag == HELLO:
        m = {"version": r.u8(), "mechanisms": r.u8(), "max_frame": r.varint(16), "client_first": r.string()}
    elif tag == CHALLENGE:
        mech = r.varint(32)
        if mech not in MECHANISM_NAMES:
            raise ProtocolViolation(f"mechanism {mech}")
        m = {"mechanism": mech, "server_first": r.string()}
    elif tag == PROOF:
        m = {"client_final": r.string()}
    elif tag == WELCOME:
        m = {
            "server_final": r.string(),
            "session_id": r.varint(64),
            "max_frame": r.varint(16),
            "heartbeat_secs": r.varint(16),
        }
    elif tag == REFUSED:
        code = r.varint(32)
        if code >= len(REFUSAL_NAMES):
            raise ProtocolViolation(f"refusal code {code}")
        m = {"code": code, "code_name": REFUSAL_NAMES[code], "retry_after_secs": r.varint(16)}
    else:
        raise ProtocolViolation(f"handshake variant {tag}")
    r.end()
    return tag, m


# --- session messages (section 5) ----------------------------------------


def encode_call(call_id, method, args):
    return varint(CALL) + varint(call_id) + string(method) + string(args)


def encode_reply(call_id, result):
    return varint(REPLY) + varint(call_id) + string(result)


def encode_error(call_id, code, message):
    return varint(ERROR) + varint(call_id) + varint(code) + string(message)


def encode_notify(method, args):
    return varint(NOTIFY) + string(method) + string(args)


def encode_ping(nonce):
    return varint(PING) + varint(nonce)


def encode_pong(nonce):
    return varint(PONG) + varint(nonce)


def encode_goodbye(reason):
    return varint(GOODBYE) + varint(reason)


def decode_message(data):
    r = Reader(data)
    tag = r.varint(32)
    if tag == CALL:
        m = {"id": r.varint(32), "method": r.string(), "args": r.bytes_()}
    elif tag == REPLY:
        m = {"id": r.varint(32), "result": r.bytes_()}
    elif tag == ERROR:
        m = {"id": r.varint(32), "code": r.varint(16), "message": r.string()}
    elif tag == NOTIFY:
        m = {"method": r.string(), "args": r.bytes_()}
    elif tag in (PING, PONG):
        m = {"nonce": r.varint(32)}
    elif tag == GOODBYE:
        reason = r.varint(32)
        if reason >= len(GOODBYE_NAMES):
            raise ProtocolViolation(f"goodbye reason {reason}")
        m = {"reason": reason, "reason_name": GOODBYE_NAMES[reason]}
    else:
        raise ProtocolViolation(f"message variant {tag}")
    r.end()
    return tag, m


# Built-in methods' argument and reply types.


def decode_whoami(result):
    r = Reader(result)
    out = {"user_id": r.i64(), "username": r.string(), "session_id": r.varint(64), "is_superuser": r.boolean()}
    r.end()
    return out


def encode_whoami(user_id, username, session_id, is_superuser):
    return zigzag(user_id) + string(username) + varint(session_id) + bytes([1 if is_superuser else 0])


def decode_string(payload):
    r = Reader(payload)
    s = r.string()
    r.end()
    return s


def encode_device_info(firmware, uptime_secs):
    return string(firmware) + varint(uptime_secs)


# --- session keys and tags (section 5) -----------------------------------


def auth_message(client_first_bare, server_first, client_final):
    """client-first-bare + "," + server-first + "," + client-final-without-proof."""
    without_proof = client_final[: client_final.rindex(",p=")]
    return ",".join([client_first_bare, server_first, without_proof]).encode("utf-8")


def session_keys(client_key, auth_msg):
    """(K_c2s, K_s2c) from ClientKey and AuthMessage."""
    k = hmac.new(client_key, SESSION_LABEL + b"\x00" + auth_msg, hashlib.sha256).digest()
    return hmac.new(k, b"c2s", hashlib.sha256).digest(), hmac.new(k, b"s2c", hashlib.sha256).digest()


class Sealer:
    def __init__(self, key):
        self.key, self.seq = key, 0

    def seal(self, message):
        signed = struct.pack(">Q", self.seq) + message
        tag = hmac.new(self.key, signed, hashlib.sha256).digest()[:TAG_LEN]
        self.seq += 1
        return signed + tag


class Opener:
    def __init__(self, key):
        self.key, self.next = key, 0

    def open(self, body):
        if len(body) < SEQ_LEN + TAG_LEN + 1:
            raise ProtocolViolation(f"session frame of {len(body)} bytes")
        signed, tag = body[:-TAG_LEN], body[-TAG_LEN:]
        want = hmac.new(self.key, signed, hashlib.sha256).digest()[:TAG_LEN]
        if not hmac.compare_digest(tag, want):
            raise ProtocolViolation("bad tag")
        (seq,) = struct.unpack(">Q", signed[:SEQ_LEN])
        if seq != self.next:
            raise ProtocolViolation(f"seq {seq}, expected {self.next}")
        self.next += 1
        return decode_message(signed[SEQ_LEN:])


def connect(host, port, timeout):
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
