"""The signature of forwarded requests (docs/DJANGO.md section 1.2).

    string_to_sign = "tether-forward-v1" LF timestamp LF "POST" LF route LF
                     request_id LF user_id LF quoted username LF session LF
                     peer LF hex(SHA-256(body))
    X-Tether-Signature: v1=<hex(HMAC-SHA256(secret, string_to_sign))>
"""

import hashlib
import hmac
import re
import time
from urllib.parse import quote as _quote

__all__ = ["HEADERS", "SignatureError", "quote", "sign", "string_to_sign", "verify"]

SCHEME = "tether-forward-v1"
VERSION_PREFIX = "v1="

# header -> (the name in request.headers, what a valid value looks like)
HEADERS = {
    "timestamp": ("X-Tether-Timestamp", re.compile(r"\A[0-9]{1,12}\Z")),
    "request_id": ("X-Tether-Request-Id", re.compile(r"\A[0-9a-f]{32}\Z")),
    "user_id": ("X-Tether-User-Id", re.compile(r"\A-?[0-9]{1,20}\Z")),
    "username": ("X-Tether-Username", re.compile(r"\A[A-Za-z0-9%._~-]*\Z")),
    "session": ("X-Tether-Session", re.compile(r"\A[0-9]{1,20}\Z")),
    "peer": ("X-Tether-Peer", re.compile(r"\A[0-9A-Fa-f.:\[\]%a-zA-Z]{1,64}\Z")),
    "signature": ("X-Tether-Signature", re.compile(r"\Av1=[0-9a-f]{64}\Z")),
}


class SignatureError(Exception):
    """Why a forwarded request is refused (403); the text is safe to log."""


def quote(s):
    """The contract's quote(): every byte but A-Z a-z 0-9 - . _ ~ as %XX."""
    return _quote(s, safe="")


def string_to_sign(*, timestamp, route, request_id, user_id, username, session, peer, body):
    """The exact bytes that are signed. ``username`` is the quoted form, as sent."""
    lines = [
        SCHEME,
        str(timestamp),
        "POST",
        route,
        request_id,
        str(user_id),
        username,
        str(session),
        peer,
        hashlib.sha256(body).hexdigest(),
    ]
    for line in lines:
        if "\n" in line:
            raise ValueError("a signed field cannot hold a line feed")
    return "\n".join(lines).encode("utf-8")


def sign(secret, **fields):
    """The X-Tether-Signature value for these fields (see string_to_sign)."""
    mac = hmac.new(secret.encode("utf-8"), string_to_sign(**fields), hashlib.sha256)
    return VERSION_PREFIX + mac.hexdigest()


def read_headers(headers):
    """The X-Tether-* headers of a request, checked for form; SignatureError names the first bad one."""
    values = {}
    for key, (header, pattern) in HEADERS.items():
        value = headers.get(header)
        if value is None:
            raise SignatureError("missing header %s" % header)
        if not pattern.match(value):
            raise SignatureError("malformed header %s" % header)
        values[key] = value
    return values


def verify(secret, headers, route, body, *, max_skew, now=None):
    """Checks a forwarded request; returns its header values or raises SignatureError.

    The signature is compared in constant time before the clock is looked
    at, so an unsigned request learns nothing about the server's time.
    """
    values = read_headers(headers)
    expected = sign(
        secret,
        timestamp=values["timestamp"],
        route=route,
        request_id=values["request_id"],
        user_id=values["user_id"],
        username=values["username"],
        session=values["session"],
        peer=values["peer"],
        body=body,
    )
    if not hmac.compare_digest(expected.encode("ascii"), values["signature"].encode("ascii")):
        raise SignatureError("bad signature (is FORWARD_SECRET the server's --forward-secret?)")
    now = time.time() if now is None else now
    skew = int(values["timestamp"]) - now
    if abs(skew) > max_skew:
        raise SignatureError(
            "timestamp %+d s from this clock (more than %d s): stale or replayed, or a clock is wrong"
            % (skew, max_skew)
        )
    return values
