"""docs/DJANGO.md section 1.2, checked by hand with the standard library only
(hmac, hashlib, urllib.parse): an independent reading of the contract.

`python -m devices.signature` checks the vector tether-server's own unit
test uses (std-server/src/forward/signing.rs)."""
import hashlib
import hmac
import time
from urllib.parse import quote

MAX_SKEW = 300

HEADERS = (
    "HTTP_X_TETHER_TIMESTAMP",
    "HTTP_X_TETHER_REQUEST_ID",
    "HTTP_X_TETHER_USER_ID",
    "HTTP_X_TETHER_USERNAME",
    "HTTP_X_TETHER_SESSION",
    "HTTP_X_TETHER_PEER",
)


def string_to_sign(timestamp, route, request_id, user_id, username, session, peer, body):
    return "\n".join(
        [
            "tether-forward-v1",
            timestamp,
            "POST",
            route,
            request_id,
            user_id,
            username,
            session,
            peer,
            hashlib.sha256(body).hexdigest(),
        ]
    )


def sign(secret, text):
    return "v1=" + hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def check(secret, route, meta, body, now=None):
    """None if the request is authentic and fresh, else why not."""
    if not secret:
        return "no TETHER_FORWARD_SECRET configured"
    values = [meta.get(h, "") for h in HEADERS]
    timestamp = values[0]
    text = string_to_sign(timestamp, route, *values[1:], body)
    presented = meta.get("HTTP_X_TETHER_SIGNATURE", "")
    if not hmac.compare_digest(sign(secret, text).encode(), presented.encode()):
        return "bad signature"
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        return "bad timestamp"
    if abs(age) > MAX_SKEW:
        return "stale timestamp"
    return None


def route_of(kind, name=None):
    """The route as the server signed it: call/{quote(M)}, notify/..., event."""
    return kind if name is None else kind + "/" + quote(name, safe="")


if __name__ == "__main__":
    text = string_to_sign(
        "1796592600",
        route_of("call", "read_sensor"),
        "0123456789abcdef0123456789abcdef",
        "42",
        quote("ålice", safe=""),
        "7",
        "192.0.2.10:50112",
        b"\x07outdoor",
    )
    got = sign("a forward secret of 32 characters", text)
    want = "v1=516d9aea58db27bce31ede4a0c1d1a50b59229a6f6585db83210f9d520455da8"
    assert got == want, (got, want)
    print("signature vector: ok")
