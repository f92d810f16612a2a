"""Django calls devices: the server's admin API (docs/DJANGO.md section 2).

Standard library only (urllib); proxies from the environment are ignored,
since the admin API is the site's own back end.
"""

import json
import logging
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import codecs, conf
from .exceptions import (
    DeviceError,
    DeviceOffline,
    DeviceTimeout,
    TetherRequestError,
    TetherUnavailable,
)

__all__ = ["DeviceSession", "call", "disconnect", "revoke", "sessions"]

logger = logging.getLogger("django_tether")

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class DeviceSession:
    """A live device session, as ``GET /sessions`` lists it."""

    id: int
    username: str
    user_id: int
    peer: str
    connected_since: datetime
    mechanism: str = ""
    is_superuser: bool = False
    calls_in: int = 0
    calls_out: int = 0
    calls_in_flight: int = 0
    #: Everything the server sent, including fields newer than this class.
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, item):
        since_ms = item.get("connected_since_unix_ms")
        if isinstance(since_ms, (int, float)):
            since = datetime.fromtimestamp(since_ms / 1000, tz=timezone.utc)
        else:
            from django.utils.dateparse import parse_datetime

            since = parse_datetime(item.get("connected_since", "")) or datetime.fromtimestamp(0, tz=timezone.utc)
        return cls(
            id=int(item["id"]),
            username=str(item["username"]),
            user_id=int(item["user_id"]),
            peer=str(item.get("peer", "")),
            connected_since=since,
            mechanism=str(item.get("mechanism", "")),
            is_superuser=bool(item.get("is_superuser", False)),
            calls_in=int(item.get("calls_in", 0)),
            calls_out=int(item.get("calls_out", 0)),
            calls_in_flight=int(item.get("calls_in_flight", 0)),
            raw=item,
        )

    def get_user(self):
        """The Django user (None if the row is gone)."""
        from django.contrib.auth import get_user_model

        return get_user_model()._default_manager.filter(pk=self.user_id).first()


def _username(user_or_username):
    if isinstance(user_or_username, str):
        return user_or_username
    get_username = getattr(user_or_username, "get_username", None)
    if callable(get_username):
        return get_username()
    raise TypeError("expected a user or a username, got %s" % type(user_or_username).__name__)


def _base_url():
    url = conf.get("ADMIN_URL")
    if not url:
        raise TetherUnavailable("TETHER['ADMIN_URL'] is not set: no admin API to talk to")
    return url.rstrip("/")


def _error_body(raw):
    try:
        body = json.loads(raw)
        return body if isinstance(body, dict) else {}
    except ValueError:
        return {}


def _request(method, path, *, body=None, content_type=None, timeout):
    """(headers, body bytes) of a 2xx answer; a TetherError for anything else."""
    url = _base_url() + path
    request = urllib.request.Request(url, data=body, method=method)
    token = conf.get("ADMIN_TOKEN")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    if content_type:
        request.add_header("Content-Type", content_type)
    request.add_header("Accept", "application/json, application/octet-stream")
    try:
        with _opener.open(request, timeout=timeout) as response:
            return response.headers, response.read()
    except urllib.error.HTTPError as e:
        with e:
            raw = e.read()
        raise _http_error(e.code, _error_body(raw), path) from None
    except (socket.timeout, TimeoutError):
        raise TetherUnavailable("the admin API at %s did not answer within %.1f s" % (_base_url(), timeout)) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TetherUnavailable("cannot reach the admin API at %s: %s" % (_base_url(), reason)) from None


def _http_error(status, body, path):
    kind = body.get("error", "")
    message = body.get("message") or kind or "HTTP %d" % status
    if status == 404 and kind == "not_connected":
        return DeviceOffline(message, status=status, body=body)
    if status == 502 and kind == "session_closed":
        return DeviceOffline(message, status=status, body=body)
    if status == 502 and kind == "remote_error":
        return DeviceError(
            body.get("message", ""), code=body.get("code"), code_name=body.get("code_name"), status=status, body=body
        )
    if status == 504:
        return DeviceTimeout(message, status=status, body=body)
    if status == 502:  # bad_reply and anything newer: the device answered something unusable
        return DeviceError(message, code=3, code_name=kind or "failed", status=status, body=body)
    if status == 401:
        return TetherUnavailable(
            "the admin API refused the token (401): TETHER['ADMIN_TOKEN'] must be the server's TETHER_ADMIN_TOKEN",
            status=status,
            body=body,
        )
    if status == 404:
        return TetherRequestError(
            "%s: no such admin route (is the server older than this app?)" % path, status=status, body=body
        )
    if 400 <= status < 500:
        return TetherRequestError(message, status=status, body=body)
    return TetherUnavailable("the admin API answered %d: %s" % (status, message), status=status, body=body)


def call(user_or_username, method, args=b"", codec=None, timeout=None, *, session=None):
    """Calls ``method`` on the user's device and returns its reply.

    ``args`` is sent as the call's arguments: bytes with ``codec=None``, a
    value the codec encodes otherwise (``"json"``, a ``postcard.Codec``;
    leave ``args`` out for a method without arguments). The reply is bytes,
    or the codec's decoding of them. ``timeout`` (seconds, default
    TETHER["CALL_TIMEOUT"]) is how long the server waits for the device.
    ``session`` picks one session when the user has several (default: the newest).

    Raises DeviceOffline (no live session), DeviceError (the device answered
    an error: ``code``, ``message``), DeviceTimeout (a DeviceError, code 4),
    TetherUnavailable (the admin API is down, unconfigured or refused the token).
    """
    codec = codecs.resolve(codec)
    timeout = float(conf.get("CALL_TIMEOUT") if timeout is None else timeout)
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if codec is codecs.RAW or (isinstance(args, (bytes, bytearray, memoryview)) and len(args) == 0):
        body = codecs.RAW.encode_args(args)
    else:
        body = codec.encode_args(args)
    query = {"timeout": "%g" % timeout}
    if session is not None:
        query["session"] = int(session)
    path = "/sessions/%s/call/%s?%s" % (
        urllib.parse.quote(_username(user_or_username), safe=""),
        urllib.parse.quote(method, safe=""),
        urllib.parse.urlencode(query),
    )
    # The server answers 504 after `timeout`; wait a little longer than that.
    http_timeout = timeout + float(conf.get("ADMIN_TIMEOUT"))
    _, reply = _request("POST", path, body=body, content_type="application/octet-stream", timeout=http_timeout)
    return codec.decode_reply(reply)


def sessions(user_or_username=None):
    """The live device sessions (all, or one user's), oldest first, as DeviceSession objects."""
    path = "/sessions"
    if user_or_username is not None:
        path += "?" + urllib.parse.urlencode({"username": _username(user_or_username)})
    _, body = _request("GET", path, timeout=float(conf.get("ADMIN_TIMEOUT")))
    try:
        items = json.loads(body)["sessions"]
        return [DeviceSession.from_json(item) for item in items]
    except (ValueError, KeyError, TypeError) as e:
        raise TetherUnavailable("the admin API's session list is not understood: %s" % e) from None


def disconnect(user_or_username, session=None):
    """Ends the user's sessions (or one) with Goodbye(Kicked); returns the ids ended.

    The device may log in again at once: to keep it out, deactivate the user
    (the app then revokes its sessions).
    """
    path = "/sessions/" + urllib.parse.quote(_username(user_or_username), safe="")
    if session is not None:
        path += "?" + urllib.parse.urlencode({"session": int(session)})
    try:
        _, body = _request("DELETE", path, timeout=float(conf.get("ADMIN_TIMEOUT")))
    except DeviceOffline:
        return []
    return list(json.loads(body).get("kicked", []))


def revoke(user=None, *, user_id=None, username=None, timeout=None):
    """Ends every session of a user with Goodbye(Revoked) and makes the server forget its cached row.

    Pass a user, or ``user_id=`` / ``username=``. Returns the session ids ended.
    """
    if user is not None:
        user_id = user.pk
    if user_id is not None:
        payload = {"user_id": int(user_id)}
    elif username is not None:
        payload = {"username": username}
    else:
        raise TypeError("revoke() needs a user, user_id= or username=")
    _, body = _request(
        "POST",
        "/revoke",
        body=json.dumps(payload).encode(),
        content_type="application/json",
        timeout=float(conf.get("ADMIN_TIMEOUT") if timeout is None else timeout),
    )
    try:
        return list(json.loads(body)["revoked"])
    except (ValueError, KeyError, TypeError):
        return []


def is_configured():
    """Whether TETHER["ADMIN_URL"] is set."""
    return bool(conf.get("ADMIN_URL"))

