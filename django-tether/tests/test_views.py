"""The forwarded-request endpoints, against docs/DJANGO.md section 1."""

import json
import time
from datetime import datetime, timezone

import pytest

from django_tether.models import SeenRequest
from django_tether.testing import TetherClient
from tests.testapp import tether as handlers
from tests.testapp.models import Connection, Press, Reading

pytestmark = pytest.mark.django_db


def text(response):
    return response.content.decode()


def test_a_json_method_sees_request_user_and_uses_the_orm(tether_client, alice):
    response = tether_client.call(alice, "report_temperature", b'{"celsius": 21.5}')
    assert response.status_code == 200, text(response)
    assert response["Content-Type"] == "application/octet-stream"
    assert json.loads(response.content) == {"user": "alice", "count": 1}
    assert Reading.objects.get().owner == alice
    response = tether_client.call(alice, "report_temperature", b'{"celsius": 22}')
    assert json.loads(response.content)["count"] == 2


def test_raw_methods_get_and_return_bytes_and_see_the_session(tether_client, alice):
    response = tether_client.call(alice, "raw", b"\x00\xff", session_id=42)
    assert response.status_code == 200
    assert response.content == b"raw:\x00\xff:42"


def test_postcard_methods(tether_client, alice):
    args = handlers.READING.encode({"celsius": 19.25, "sensor": "hall"})
    response = tether_client.call(alice, "report_reading", args)
    assert response.status_code == 200, text(response)
    assert response.content == b"\x01"
    assert Reading.objects.get().celsius == 19.25
    response = tether_client.call(alice, "report_reading", args[:-1])
    assert response.status_code == 400
    assert "bad arguments for method 'report_reading'" in text(response)


def test_a_bare_decorator_names_the_method_after_the_function(tether_client, alice):
    assert tether_client.call(alice, "whoami_django").content == b"alice"


def test_async_handlers(tether_client, alice):
    assert tether_client.call(alice, "async_echo", b"hi").content == b"hi"


def test_names_are_quoted_in_the_route_and_the_signature(tether_client, alice):
    response = tether_client.call(alice, "temp/room 1")
    assert response.status_code == 200, text(response)
    assert response.content == b"odd"


def test_an_unknown_method_is_404(tether_client, alice):
    response = tether_client.call(alice, "no_such_method")
    assert response.status_code == 404
    assert "unknown method 'no_such_method'" in text(response)


@pytest.mark.parametrize(
    "method,status,message,code",
    [
        ("report_temperature", 400, 'expected {"celsius": number}', None),
        ("forbidden", 403, "not for you", None),
        ("invalid", 400, "value too large", None),
        ("app_error", 409, "the valve is stuck", "1042"),
        ("missing", 409, "not found", None),
    ],
)
def test_handler_exceptions_map_to_the_contracts_statuses(tether_client, alice, method, status, message, code):
    response = tether_client.call(alice, method, b'{"celsius": "warm"}')
    assert response.status_code == status
    assert response["Content-Type"].startswith("text/plain")
    assert message in text(response)
    assert response.get("X-Tether-Error-Code") == code


def test_bad_json_is_bad_arguments(tether_client, alice):
    response = tether_client.call(alice, "report_temperature", b"{not json")
    assert response.status_code == 400
    assert "not UTF-8 JSON" in text(response)


def test_a_handler_bug_is_a_500(tether_client, alice):
    tether_client.client.raise_request_exception = False
    assert tether_client.call(alice, "crash").status_code == 500
    assert tether_client.call(alice, "returns_str").status_code == 500


# --- the signature ----------------------------------------------------------


def test_a_wrong_secret_is_refused(alice):
    response = TetherClient(secret="another-secret-0123456789").call(alice, "raw")
    assert response.status_code == 403
    assert "bad signature" in text(response)


def test_every_signed_field_is_covered(tether_client, alice, client):
    good = tether_client.call(alice, "raw", b"x")
    assert good.status_code == 200
    sent = good.tether_headers
    meta = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in sent.items()}
    for header, other in [
        ("X-Tether-Timestamp", str(int(sent["X-Tether-Timestamp"]) + 1)),
        ("X-Tether-Request-Id", "f" * 32),
        ("X-Tether-User-Id", "999"),
        ("X-Tether-Username", "bob"),
        ("X-Tether-Session", "2"),
        ("X-Tether-Peer", "127.0.0.1:50001"),
    ]:
        changed = dict(meta, **{"HTTP_" + header.upper().replace("-", "_"): other})
        response = client.generic("POST", "/tether/call/raw", b"x", "application/octet-stream", **changed)
        assert response.status_code == 403, header
        assert "bad signature" in text(response), header
    # Another body, another route.
    response = client.generic("POST", "/tether/call/raw", b"y", "application/octet-stream", **meta)
    assert response.status_code == 403
    response = client.generic("POST", "/tether/call/whoami_django", b"x", "application/octet-stream", **meta)
    assert response.status_code == 403


@pytest.mark.parametrize("skew", [-301, 301, -100000])
def test_stale_or_future_timestamps_are_refused(tether_client, alice, skew):
    response = tether_client.call(alice, "raw", timestamp=int(time.time()) + skew)
    assert response.status_code == 403
    assert "timestamp" in text(response)


def test_timestamps_within_the_window_pass(tether_client, alice):
    for skew in (-290, 290):
        assert tether_client.call(alice, "raw", timestamp=int(time.time()) + skew).status_code == 200


@pytest.mark.parametrize(
    "header,value",
    [
        ("X-Tether-Signature", None),
        ("X-Tether-Signature", "v2=" + "0" * 64),
        ("X-Tether-Request-Id", "XYZ"),
        ("X-Tether-Timestamp", "soon"),
        ("X-Tether-Peer", "a\nb"),
    ],
)
def test_missing_or_malformed_headers_are_refused(tether_client, alice, header, value):
    response = tether_client.call(alice, "raw", headers={header: value})
    assert response.status_code == 403
    assert header in text(response)


def test_without_a_secret_nothing_is_accepted(tether_client, alice, settings):
    settings.TETHER = {**settings.TETHER, "FORWARD_SECRET": None}
    response = TetherClient(secret="test-forward-secret-0123456789").call(alice, "raw")
    assert response.status_code == 503


def test_get_is_not_allowed(client):
    assert client.get("/tether/call/raw").status_code == 405


# --- users --------------------------------------------------------------------


def test_an_inactive_or_deleted_user_is_refused(tether_client, alice):
    alice.is_active = False
    alice.save()
    response = tether_client.call(alice, "raw")
    assert response.status_code == 403
    assert "inactive" in text(response)
    assert tether_client.call((4242, "ghost"), "raw").status_code == 403


# --- replays and at-least-once delivery ----------------------------------------


def test_a_replayed_call_is_refused(tether_client, alice):
    assert tether_client.call(alice, "raw", request_id="a" * 32).status_code == 200
    response = tether_client.call(alice, "raw", request_id="a" * 32)
    assert response.status_code == 403
    assert "replayed" in text(response)


def test_replay_refusal_can_be_turned_off(tether_client, alice, settings):
    settings.TETHER = {**settings.TETHER, "REFUSE_REPLAYED_CALLS": False}
    for _ in range(2):
        assert tether_client.call(alice, "raw", request_id="a" * 32).status_code == 200


def test_a_notification_is_handled_once_however_often_it_is_delivered(tether_client, alice):
    for _ in range(3):
        response = tether_client.notify(alice, "button", b'{"button": "A"}', request_id="b" * 32)
        assert response.status_code == 204
    assert Press.objects.count() == 1
    assert response["X-Tether-Duplicate"] == "1"
    tether_client.notify(alice, "button", b'{"button": "B"}')
    assert Press.objects.count() == 2


def test_a_failed_notification_is_rolled_back_and_handled_on_redelivery(tether_client, alice):
    tether_client.client.raise_request_exception = False
    handlers.FAIL_ONCE["armed"] = True
    response = tether_client.notify(alice, "button", b'{"button": "A"}', request_id="c" * 32)
    assert response.status_code == 500  # the server delivers it again later
    assert Press.objects.count() == 0
    assert not SeenRequest.objects.filter(pk="c" * 32).exists()
    response = tether_client.notify(alice, "button", b'{"button": "A"}', request_id="c" * 32)
    assert response.status_code == 204
    assert Press.objects.count() == 1


def test_unknown_or_undecodable_notifications_are_refused_as_delivered(tether_client, alice):
    assert tether_client.notify(alice, "no_such", b"").status_code == 404
    assert tether_client.notify(alice, "button", b"\xff").status_code == 400


def test_old_ids_are_pruned():
    from datetime import timedelta

    from django.utils import timezone as tz

    old = tz.now() - timedelta(days=2)
    SeenRequest.objects.create(request_id="1" * 32, kind="call", seen_at=tz.now() - timedelta(seconds=700))
    SeenRequest.objects.create(request_id="2" * 32, kind="notify", seen_at=old)
    SeenRequest.objects.create(request_id="3" * 32, kind="event", seen_at=tz.now() - timedelta(hours=1))
    SeenRequest.objects.create(request_id="4" * 32, kind="call", seen_at=tz.now())
    assert SeenRequest.objects.prune() == 2
    assert sorted(SeenRequest.objects.values_list("pk", flat=True)) == ["3" * 32, "4" * 32]


# --- events -------------------------------------------------------------------


def test_events_send_the_signals_once(tether_client, alice):
    at = datetime(2026, 12, 6, 21, 30, 0, 123456, tzinfo=timezone.utc)
    received = []

    from django_tether.signals import device_connected

    def receiver(sender, **kwargs):
        received.append(kwargs)

    device_connected.connect(receiver)
    try:
        for _ in range(2):
            response = tether_client.event(alice, "connected", at=at, session_id=7, request_id="d" * 32)
            assert response.status_code == 204, text(response)
    finally:
        device_connected.disconnect(receiver)
    assert len(received) == 1
    kw = received[0]
    assert kw["user"] == alice
    assert (kw["username"], kw["user_id"], kw["session_id"]) == ("alice", alice.pk, 7)
    assert kw["peer"] == "127.0.0.1:50000"
    assert kw["at"] == at
    assert kw["request"].tether.kind == "event"
    response = tether_client.event(alice, "disconnected", reason="revoked", session_id=7)
    assert response.status_code == 204
    assert list(Connection.objects.order_by("pk").values_list("event", "reason", "session_id")) == [
        ("connected", "", 7),
        ("disconnected", "revoked", 7),
    ]


def test_events_of_deleted_or_inactive_users_are_still_delivered(tether_client, alice):
    ghost = (4242, "ghost")
    assert tether_client.event(ghost, "disconnected", reason="revoked").status_code == 204
    assert Connection.objects.get().had_user is False


@pytest.mark.parametrize(
    "body,message",
    [
        (b"not json", "not JSON"),
        (b"[]", "\"event\" name"),
        (b'{"event": "connected"}', "'session_id'"),
        (
            b'{"event": "connected", "session_id": 2, "user_id": 1, "username": "a", "peer": "p", '
            b'"at": "2026-01-01T00:00:00Z"}',
            "disagree",
        ),
        (
            b'{"event": "connected", "session_id": 1, "user_id": %d, "username": "a", "peer": "p", "at": "yesterday"}',
            "'at'",
        ),
        (
            b'{"event": "disconnected", "session_id": 1, "user_id": %d, "username": "a", "peer": "p", '
            b'"at": "2026-01-01T00:00:00Z"}',
            "'reason'",
        ),
    ],
)
def test_malformed_events_are_400(tether_client, alice, body, message):
    if b"%d" in body:
        body = body % alice.pk
    response = tether_client.event(alice, "connected", body=body)
    assert response.status_code == 400
    assert message in text(response)


def test_events_unknown_to_this_version_are_accepted_and_ignored(tether_client, alice):
    body = json.dumps({"event": "renamed", "session_id": 1}).encode()
    assert tether_client.event(alice, "renamed", body=body).status_code == 204
