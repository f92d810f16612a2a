"""The ``TETHER`` setting, read on every use (so ``override_settings`` works)."""

from django.conf import settings

DEFAULTS = {
    # Base URL of `tether serve --admin`, e.g. "http://127.0.0.1:7421".
    "ADMIN_URL": None,
    # TETHER_ADMIN_TOKEN of the server (Authorization: Bearer).
    "ADMIN_TOKEN": None,
    # --forward-secret of the server: signs every forwarded request.
    "FORWARD_SECRET": None,
    # Forwarded requests signed further away from this clock are refused.
    "MAX_CLOCK_SKEW": 300,
    # Seconds for an admin API request other than call() (connect included).
    "ADMIN_TIMEOUT": 5.0,
    # call()'s default: how long the server waits for the device.
    "CALL_TIMEOUT": 10.0,
    # Tell the server at once when a user is deactivated, deleted or changes
    # password (POST /revoke after the transaction commits).
    "REVOKE_ON_CHANGE": True,
    # Refuse a forwarded call whose request id was seen before (a replay).
    "REFUSE_REPLAYED_CALLS": True,
    # How long delivered notification/event ids are remembered (seconds), so
    # that a retried delivery is not handled twice.
    "DEDUP_RETENTION": 24 * 3600,
    # Import every installed app's tether.py at startup.
    "AUTODISCOVER": True,
}

# The contract's minimum (docs/DJANGO.md: the server refuses shorter ones).
MIN_SECRET_LEN = 16


def raw():
    """The TETHER setting as the project wrote it (a dict, or whatever it is)."""
    return getattr(settings, "TETHER", {})


def get(name):
    """One value of the TETHER setting, or its default."""
    value = raw()
    if isinstance(value, dict) and name in value:
        return value[name]
    return DEFAULTS[name]
