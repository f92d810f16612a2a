"""django-tether: Tether devices as ordinary Django code.

Handlers for device calls and notifications live in each app's ``tether.py``::

    import django_tether

    @django_tether.method("report_temperature", codec="json")
    def report_temperature(request, args):
        Reading.objects.create(owner=request.user, celsius=args["celsius"])
        return {"ok": True}

and Django calls devices back with ``django_tether.call(user, "device_info")``.
See docs/DJANGO.md of the Tether repository.
"""

from .apps import autodiscover
from .client import DeviceSession, call, disconnect, revoke, sessions
from .exceptions import (
    ApplicationError,
    BadArguments,
    DeviceError,
    DeviceOffline,
    DeviceTimeout,
    TetherError,
    TetherRequestError,
    TetherUnavailable,
)
from .registry import method, notification

__version__ = "0.1.0"

__all__ = [
    "ApplicationError",
    "BadArguments",
    "DeviceError",
    "DeviceOffline",
    "DeviceSession",
    "DeviceTimeout",
    "TetherError",
    "TetherRequestError",
    "TetherUnavailable",
    "autodiscover",
    "call",
    "disconnect",
    "method",
    "notification",
    "revoke",
    "sessions",
]
