"""Call a Tether device from Django through `tether serve --admin`.

Standard library only (urllib): copy this file into your Django project, e.g.
as ``devices/tether.py``. Settings are read from ``django.conf.settings`` when
Django is configured, else from the environment:

- ``TETHER_ADMIN_URL``: the admin API, default ``http://127.0.0.1:7421``
- ``TETHER_ADMIN_TOKEN``: its bearer token (the server's TETHER_ADMIN_TOKEN)

A view::

    from django.http import JsonResponse
    from devices.tether import DeviceError, DeviceNotConnected, DeviceTimeout, call_device

    def device_status(request, username):
        try:
            info = call_device(username, "device_info", timeout=5)
        except DeviceNotConnected:
            return JsonResponse({"online": False}, status=404)
        except DeviceTimeout:
            return JsonResponse({"online": True, "error": "no answer"}, status=504)
        except DeviceError as e:
            return JsonResponse({"online": True, "error": e.message}, status=502)
        return JsonResponse({"online": True, "firmware": info["firmware"],
                             "uptime_secs": info["uptime_secs"]})

Run as a script to try it: ``python3 django_call_device.py alice device_info``
(or ``... alice echo '"hello"'``); exit status 0 ok, 3 not connected,
4 timeout, 5 the device answered an error, 1 anything else.
"""

# --- snippet start
import json
import os
import urllib.error
import urllib.parse
import urllib.request


class TetherError(Exception):
    """The admin API could not do the call (see the subclasses)."""

    def __init__(self, status, body):
        self.status = status
        self.body = body if isinstance(body, dict) else {}
        self.message = self.body.get("message", str(body))
        super().__init__(f"{status}: {self.message}")


class DeviceNotConnected(TetherError):
    """404: the user has no live session."""


class DeviceTimeout(TetherError):
    """504: the device did not answer in time."""


class DeviceError(TetherError):
    """502: the device answered with an error (``code``, ``code_name``)."""

    @property
    def code(self):
        return self.body.get("code")

    @property
    def code_name(self):
        return self.body.get("code_name")


def _setting(name, default=None):
    try:
        from django.conf import settings

        if settings.configured and hasattr(settings, name):
            return getattr(settings, name)
    except ImportError:
        pass
    return os.environ.get(name, default)


def _request(method, path, body=None, content_type=None, timeout=10.0):
    base = _setting("TETHER_ADMIN_URL", "http://127.0.0.1:7421").rstrip("/")
    token = _setting("TETHER_ADMIN_TOKEN")
    request = urllib.request.Request(base + path, data=body, method=method)
    if token:
        request.add_header("Authorization", "Bearer " + token)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.headers, response.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            detail = json.loads(raw)
        except ValueError:
            detail = raw.decode("utf-8", "replace")
        kind = {404: DeviceNotConnected, 504: DeviceTimeout, 502: DeviceError}
        raise kind.get(e.code, TetherError)(e.code, detail) from None


def call_device(username, method, args=None, *, raw=None, session=None, timeout=10.0):
    """Calls ``method`` on ``username``'s device and returns its reply.

    Built-in typed methods (echo, whoami, server_time, device_info) take
    ``args`` as JSON-able values and return JSON values. Other methods take
    ``raw=`` (the postcard-encoded arguments, bytes) and return the reply's
    postcard bytes. ``session`` picks one session when the user has several
    (default: the newest). ``timeout`` is how long the server waits for the
    device, in seconds.
    """
    path = "/sessions/{}/call/{}?{}".format(
        urllib.parse.quote(username, safe=""),
        urllib.parse.quote(method, safe=""),
        urllib.parse.urlencode(
            {"timeout": timeout, **({"session": session} if session is not None else {})}
        ),
    )
    if raw is not None:
        _, body = _request("POST", path, bytes(raw), "application/octet-stream", timeout + 5)
        return body
    payload = json.dumps(args).encode()
    _, body = _request("POST", path, payload, "application/json", timeout + 5)
    return json.loads(body)["reply"]


def list_sessions(username=None):
    """The live sessions (dicts: id, username, user_id, peer, connected_since, ...)."""
    query = "?" + urllib.parse.urlencode({"username": username}) if username else ""
    _, body = _request("GET", "/sessions" + query)
    return json.loads(body)["sessions"]


def kick(username, session=None):
    """Ends the user's sessions (or one); returns the ids kicked."""
    query = "?" + urllib.parse.urlencode({"session": session}) if session is not None else ""
    path = "/sessions/" + urllib.parse.quote(username, safe="") + query
    _, body = _request("DELETE", path)
    return json.loads(body)["kicked"]
# --- snippet end


def main(argv):
    import sys

    if len(argv) < 3:
        print("usage: django_call_device.py USERNAME METHOD [JSON_ARGS]", file=sys.stderr)
        return 1
    args = json.loads(argv[3]) if len(argv) > 3 else None
    try:
        reply = call_device(argv[1], argv[2], args)
    except DeviceNotConnected as e:
        print("not connected:", e.message, file=sys.stderr)
        return 3
    except DeviceTimeout as e:
        print("timeout:", e.message, file=sys.stderr)
        return 4
    except DeviceError as e:
        print(f"device error {e.code_name} ({e.code}): {e.message}", file=sys.stderr)
        return 5
    except (TetherError, OSError) as e:
        print("error:", e, file=sys.stderr)
        return 1
    print(json.dumps(reply, sort_keys=True))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv))
