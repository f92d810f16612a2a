"""Test your handlers without a Tether server: signed requests, as `tether serve --forward` sends them.

    from django_tether.testing import TetherClient

    def test_report(db, django_user_model):
        alice = django_user_model.objects.create_user("alice")
        response = TetherClient().call(alice, "report_temperature", b'{"celsius": 21.5}')
        assert response.status_code == 200
"""

import json
import secrets
import time
from datetime import datetime, timezone

from django.test import Client

from . import conf
from .signature import quote, sign


class TetherClient:
    """Posts signed forwarded calls, notifications and events to the app's views.

    ``prefix`` is where ``django_tether.urls`` is included; ``secret``
    defaults to TETHER["FORWARD_SECRET"].
    """

    def __init__(self, client=None, prefix="/tether/", secret=None):
        self.client = client or Client()
        self.prefix = prefix.rstrip("/") + "/"
        self.secret = secret

    def headers(self, route, body, user, *, session_id=1, peer="127.0.0.1:50000", request_id=None, timestamp=None):
        """The X-Tether-* headers for a request (``user``: a user, or (user_id, username))."""
        if isinstance(user, tuple):
            user_id, username = user
        else:
            user_id, username = user.pk, user.get_username()
        fields = {
            "timestamp": str(int(time.time()) if timestamp is None else timestamp),
            "request_id": request_id or secrets.token_hex(16),
            "user_id": str(user_id),
            "username": quote(username),
            "session": str(session_id),
            "peer": peer,
        }
        signature = sign(self.secret or conf.get("FORWARD_SECRET"), route=route, body=body, **fields)
        return {
            "X-Tether-Timestamp": fields["timestamp"],
            "X-Tether-Request-Id": fields["request_id"],
            "X-Tether-User-Id": fields["user_id"],
            "X-Tether-Username": fields["username"],
            "X-Tether-Session": fields["session"],
            "X-Tether-Peer": fields["peer"],
            "X-Tether-Signature": signature,
        }

    def _post(self, route, body, content_type, user, headers=None, **kwargs):
        sent = self.headers(route, body, user, **kwargs)
        sent.update(headers or {})
        meta = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in sent.items() if v is not None}
        response = self.client.generic("POST", self.prefix + route, body, content_type, **meta)
        response.tether_headers = sent
        return response

    def call(self, user, method, args=b"", **kwargs):
        """POST call/<method>: a device calling ``method`` with these argument bytes."""
        return self._post("call/" + quote(method), bytes(args), "application/octet-stream", user, **kwargs)

    def notify(self, user, name, args=b"", **kwargs):
        """POST notify/<name>: a device notification."""
        return self._post("notify/" + quote(name), bytes(args), "application/octet-stream", user, **kwargs)

    def event(self, user, event, *, reason=None, at=None, body=None, **kwargs):
        """POST event: ``"connected"`` or ``"disconnected"`` (with ``reason``)."""
        if body is None:
            user_id, username = user if isinstance(user, tuple) else (user.pk, user.get_username())
            at = at or datetime.now(timezone.utc)
            payload = {
                "event": event,
                "session_id": kwargs.get("session_id", 1),
                "user_id": user_id,
                "username": username,
                "peer": kwargs.get("peer", "127.0.0.1:50000"),
                "at": at.isoformat().replace("+00:00", "Z"),
            }
            if reason is not None:
                payload["reason"] = reason
            body = json.dumps(payload).encode()
        return self._post("event", body, "application/json", user, **kwargs)
