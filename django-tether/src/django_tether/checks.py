"""System checks (``manage.py check``): a misconfigured TETHER fails at startup, not at the first device."""

import ipaddress
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from . import conf, registry

HASHER = "django_tether.hashers.ScramSHA256PasswordHasher"


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@register(Tags.security, "tether")
def check_settings(app_configs=None, **kwargs):
    value = conf.raw()
    if not isinstance(value, dict):
        return [Error("TETHER must be a dict.", id="tether.E001")]
    errors = []
    unknown = sorted(set(value) - set(conf.DEFAULTS))
    if unknown:
        errors.append(
            Error(
                "Unknown TETHER key(s): %s." % ", ".join(unknown),
                hint="Known keys: %s." % ", ".join(sorted(conf.DEFAULTS)),
                id="tether.E002",
            )
        )
    secret = conf.get("FORWARD_SECRET")
    if not secret:
        errors.append(
            Error(
                "TETHER['FORWARD_SECRET'] is not set: forwarded device calls cannot be verified.",
                hint="Use the secret `tether serve --forward-secret` has (16+ characters), "
                "e.g. from the environment: os.environ['TETHER_FORWARD_SECRET'].",
                id="tether.E003",
            )
        )
    elif not isinstance(secret, str) or len(secret) < conf.MIN_SECRET_LEN:
        errors.append(
            Error(
                "TETHER['FORWARD_SECRET'] must be a string of at least %d characters." % conf.MIN_SECRET_LEN,
                hint="Generate one: python -c 'import secrets; print(secrets.token_hex(32))'.",
                id="tether.E004",
            )
        )
    url = conf.get("ADMIN_URL")
    token = conf.get("ADMIN_TOKEN")
    if not url:
        errors.append(
            Warning(
                "TETHER['ADMIN_URL'] is not set: django_tether.call() and sessions() cannot work, "
                "and deactivating a user does not end its device sessions until the server revalidates.",
                hint="Point it at `tether serve --admin ADDR`, e.g. 'http://127.0.0.1:7421'.",
                id="tether.W001",
            )
        )
    else:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            errors.append(Error("TETHER['ADMIN_URL'] must be an http:// or https:// URL.", id="tether.E005"))
        elif not token and not _is_loopback(parts.hostname):
            errors.append(
                Error(
                    "TETHER['ADMIN_URL'] is not a loopback address but TETHER['ADMIN_TOKEN'] is not set.",
                    hint="tether serve only serves its admin API beyond loopback with TETHER_ADMIN_TOKEN.",
                    id="tether.E006",
                )
            )
    if token and (
        not isinstance(token, str)
        or len(token) < conf.MIN_SECRET_LEN
        or not all(0x21 <= ord(c) <= 0x7E for c in token)
    ):
        errors.append(
            Error(
                "TETHER['ADMIN_TOKEN'] must be at least %d visible ASCII characters (the server's rule)."
                % conf.MIN_SECRET_LEN,
                id="tether.E007",
            )
        )
    for key in ("MAX_CLOCK_SKEW", "ADMIN_TIMEOUT", "CALL_TIMEOUT", "DEDUP_RETENTION"):
        v = conf.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            errors.append(Error("TETHER[%r] must be a positive number of seconds." % key, id="tether.E008"))
    return errors


@register(Tags.security, "tether")
def check_hasher(app_configs=None, **kwargs):
    hashers = list(getattr(settings, "PASSWORD_HASHERS", []))
    if HASHER in hashers and hashers[0] != HASHER:
        return [
            Warning(
                "%s is in PASSWORD_HASHERS but not first: new passwords are stored as %s rows, "
                "which let anyone with a copy of the table log a device in." % (HASHER, hashers[0].rsplit(".", 1)[-1]),
                hint="Put it first; `manage.py tether_convert_hashes` converts pbkdf2_sha256 rows now.",
                id="tether.W002",
            )
        ]
    return []


@register("tether")
def check_handlers(app_configs=None, **kwargs):
    warnings = []
    for name, handler in sorted(registry.methods().items()):
        if name in registry.SERVER_BUILTINS:
            warnings.append(
                Warning(
                    "%s handles method %r, which tether-server answers itself." % (handler.qualname, name),
                    hint="Run the server with --forward-builtin %s to hand it to Django." % name,
                    id="tether.W003",
                )
            )
    return warnings
