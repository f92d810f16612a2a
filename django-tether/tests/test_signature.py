import pytest

from django_tether.signature import SignatureError, quote, sign, string_to_sign, verify

# docs/DJANGO.md section 1.2 (tether-server's forward::signing test checks the same).
VECTOR = dict(
    timestamp="1796592600",
    route="call/read_sensor",
    request_id="0123456789abcdef0123456789abcdef",
    user_id="42",
    username=quote("\u00e5lice"),
    session="7",
    peer="192.0.2.10:50112",
    body=b"\x07outdoor",
)
SECRET = "a forward secret of 32 characters"


def test_the_contracts_vector():
    assert string_to_sign(**VECTOR).decode().splitlines() == [
        "tether-forward-v1",
        "1796592600",
        "POST",
        "call/read_sensor",
        "0123456789abcdef0123456789abcdef",
        "42",
        "%C3%A5lice",
        "7",
        "192.0.2.10:50112",
        "849c2f3d8a29335c9bb08cc7e77af7d7ad6b714c8dd02680c9f4fe0db57dd548",
    ]
    assert sign(SECRET, **VECTOR) == "v1=516d9aea58db27bce31ede4a0c1d1a50b59229a6f6585db83210f9d520455da8"


def headers(**changes):
    h = {
        "X-Tether-Timestamp": VECTOR["timestamp"],
        "X-Tether-Request-Id": VECTOR["request_id"],
        "X-Tether-User-Id": VECTOR["user_id"],
        "X-Tether-Username": VECTOR["username"],
        "X-Tether-Session": VECTOR["session"],
        "X-Tether-Peer": VECTOR["peer"],
        "X-Tether-Signature": "v1=516d9aea58db27bce31ede4a0c1d1a50b59229a6f6585db83210f9d520455da8",
    }
    h.update(changes)
    return h


def test_verify_accepts_the_vector_within_the_window():
    values = verify(SECRET, headers(), "call/read_sensor", b"\x07outdoor", max_skew=300, now=1796592600 + 299)
    assert values["username"] == "%C3%A5lice"


def test_verify_checks_the_signature_before_the_clock():
    # A forged request far outside the window is told "bad signature", not the time.
    with pytest.raises(SignatureError, match="bad signature"):
        verify("another secret 0123456789", headers(), "call/read_sensor", b"\x07outdoor", max_skew=300, now=0)
    with pytest.raises(SignatureError, match="timestamp"):
        verify(SECRET, headers(), "call/read_sensor", b"\x07outdoor", max_skew=300, now=1796592600 + 301)


def test_quote_is_pythons_quote_with_nothing_safe():
    assert quote("a-b.c_d~e") == "a-b.c_d~e"
    assert quote("a/b c") == "a%2Fb%20c"
    assert quote("x\ny") == "x%0Ay"


def test_line_feeds_cannot_be_signed():
    with pytest.raises(ValueError):
        string_to_sign(**dict(VECTOR, peer="a\nb"))
