"""call(), sessions(), disconnect(), revoke() against a local stand-in for the admin API."""

import socket
import threading
import time
from datetime import datetime, timezone

import pytest

import django_tether
from django_tether import postcard
from tests.fake_admin import session_json


def test_call_sends_raw_bytes_and_returns_the_reply(fake_admin):
    fake_admin.routes[("POST", "/sessions/alice/call/read_sensor")] = (200, b"\x01\x02", "application/octet-stream")
    assert django_tether.call("alice", "read_sensor", b"\x07", timeout=3) == b"\x01\x02"
    req = fake_admin.requests[-1]
    assert req.body == b"\x07"
    assert req.query == {"timeout": ["3"]}
    assert req.headers["Content-Type"] == "application/octet-stream"
    assert req.headers["Authorization"] == "Bearer test-admin-token-0123456789"


def test_call_takes_a_user_quotes_names_and_picks_a_session(fake_admin, django_user_model, db):
    user = django_user_model(username="o,dd=näme/x")
    fake_admin.routes[("POST", "/sessions/o%2Cdd%3Dn%C3%A4me%2Fx/call/m%2F1")] = (200, b"")
    assert django_tether.call(user, "m/1", session=9) == b""
    assert fake_admin.requests[-1].query["session"] == ["9"]


def test_call_with_codecs(fake_admin):
    fake_admin.routes[("POST", "/sessions/alice/call/device_info")] = (
        200,
        postcard.DEVICE_STATUS.encode({"firmware": "thermostat 1.2", "uptime_secs": 4711}),
        "application/octet-stream",
    )
    assert django_tether.call("alice", "device_info", codec=postcard.DEVICE_INFO) == {
        "firmware": "thermostat 1.2",
        "uptime_secs": 4711,
    }
    assert fake_admin.requests[-1].body == b""
    fake_admin.routes[("POST", "/sessions/alice/call/set")] = (200, b'{"ok":true}', "application/octet-stream")
    assert django_tether.call("alice", "set", {"target": 21.5}, codec="json") == {"ok": True}
    assert fake_admin.requests[-1].body == b'{"target":21.5}'


def test_raw_args_must_be_bytes(fake_admin):
    with pytest.raises(TypeError):
        django_tether.call("alice", "m", "text")


@pytest.mark.parametrize(
    "status,body,exception,attrs",
    [
        (404, {"error": "not_connected", "message": "alice is not connected"}, django_tether.DeviceOffline, {}),
        (502, {"error": "session_closed", "message": "the session ended"}, django_tether.DeviceOffline, {}),
        (
            502,
            {"error": "remote_error", "code": 1042, "code_name": "application", "message": "valve stuck"},
            django_tether.DeviceError,
            {"code": 1042, "code_name": "application", "message": "valve stuck"},
        ),
        (504, {"error": "timeout", "message": "no reply within 10 s"}, django_tether.DeviceTimeout, {"code": 4}),
        (401, {"error": "unauthorized", "message": "bad token"}, django_tether.TetherUnavailable, {}),
        (413, {"error": "too_large", "message": "too large"}, django_tether.TetherRequestError, {}),
        (503, {"error": "shutting_down", "message": "bye"}, django_tether.TetherUnavailable, {}),
    ],
)
def test_admin_api_errors_raise_exact_exceptions(fake_admin, status, body, exception, attrs):
    fake_admin.routes[("POST", "/sessions/alice/call/m")] = (status, body)
    with pytest.raises(exception) as info:
        django_tether.call("alice", "m")
    assert info.value.status == status
    for k, v in attrs.items():
        assert getattr(info.value, k) == v
    assert isinstance(info.value, django_tether.TetherError)


def test_a_device_timeout_is_a_device_error():
    assert issubclass(django_tether.DeviceTimeout, django_tether.DeviceError)


def test_unreachable_or_unconfigured_admin_api_is_unavailable(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings.TETHER = {**settings.TETHER, "ADMIN_URL": "http://127.0.0.1:%d" % port}
    with pytest.raises(django_tether.TetherUnavailable, match="cannot reach"):
        django_tether.sessions()
    settings.TETHER = {**settings.TETHER, "ADMIN_URL": None}
    with pytest.raises(django_tether.TetherUnavailable, match="ADMIN_URL"):
        django_tether.call("alice", "m")


def test_a_silent_admin_api_times_out(settings):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    settings.TETHER = {
        **settings.TETHER,
        "ADMIN_URL": "http://127.0.0.1:%d" % listener.getsockname()[1],
        "ADMIN_TIMEOUT": 0.3,
    }
    start = time.monotonic()
    with pytest.raises(django_tether.TetherUnavailable, match="did not answer"):
        django_tether.sessions()
    assert time.monotonic() - start < 5
    listener.close()


def test_sessions_lists_device_sessions(fake_admin):
    fake_admin.sessions = [session_json(3, "alice", 1), session_json(5, "bob", 2, peer="[2001:db8::1]:4000")]
    sessions = django_tether.sessions()
    assert [s.id for s in sessions] == [3, 5]
    s = sessions[1]
    assert (s.username, s.user_id, s.peer, s.mechanism) == ("bob", 2, "[2001:db8::1]:4000", "SCRAM-SHA-256")
    assert s.connected_since == datetime(2025, 12, 6, 5, 46, 40, tzinfo=timezone.utc)
    assert (s.calls_in, s.calls_out) == (3, 1)
    assert [s.id for s in django_tether.sessions("alice")] == [3]
    assert fake_admin.requests[-1].query == {"username": ["alice"]}


def test_disconnect_and_revoke(fake_admin):
    fake_admin.routes[("DELETE", "/sessions/alice")] = (200, {"kicked": [3]})
    assert django_tether.disconnect("alice", session=3) == [3]
    assert fake_admin.requests[-1].query == {"session": ["3"]}
    fake_admin.routes[("DELETE", "/sessions/bob")] = (404, {"error": "not_connected", "message": "no"})
    assert django_tether.disconnect("bob") == []
    fake_admin.routes[("POST", "/revoke")] = (200, {"revoked": [3, 4]})
    assert django_tether.revoke(user_id=42) == [3, 4]
    assert fake_admin.requests[-1].json() == {"user_id": 42}
    assert django_tether.revoke(username="alice") == [3, 4]
    assert fake_admin.requests[-1].json() == {"username": "alice"}
    with pytest.raises(TypeError):
        django_tether.revoke()


def test_proxies_from_the_environment_are_not_used(fake_admin, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    assert django_tether.sessions() == []
