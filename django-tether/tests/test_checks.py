import pytest
from django.core.checks import run_checks

from django_tether import checks, registry


def ids():
    return sorted(m.id for m in checks.check_settings())


def test_the_test_settings_pass(settings):
    settings.TETHER = {**settings.TETHER, "ADMIN_URL": "http://127.0.0.1:7421"}
    assert ids() == []


@pytest.mark.parametrize(
    "tether,expected",
    [
        ({}, ["tether.E003", "tether.W001"]),
        ({"FORWARD_SECRET": "short"}, ["tether.E004", "tether.W001"]),
        ({"FORWARD_SECRET": 1234567890123456789}, ["tether.E004", "tether.W001"]),
        ({"FORWARD_SECRET": "x" * 16, "FORWARD_SECRETS": "x" * 16}, ["tether.E002", "tether.W001"]),
        ({"FORWARD_SECRET": "x" * 16, "ADMIN_URL": "ftp://host"}, ["tether.E005"]),
        ({"FORWARD_SECRET": "x" * 16, "ADMIN_URL": "http://tether.internal:7421"}, ["tether.E006"]),
        (
            {"FORWARD_SECRET": "x" * 16, "ADMIN_URL": "http://tether.internal:7421", "ADMIN_TOKEN": "y" * 16},
            [],
        ),
        ({"FORWARD_SECRET": "x" * 16, "ADMIN_URL": "http://[::1]:7421"}, []),
        ({"FORWARD_SECRET": "x" * 16, "ADMIN_URL": "http://localhost:7421", "ADMIN_TOKEN": "short"}, ["tether.E007"]),
        ({"FORWARD_SECRET": "x" * 16, "ADMIN_URL": "http://127.0.0.1", "ADMIN_TOKEN": "with space 0123456"}, ["tether.E007"]),
        ({"FORWARD_SECRET": "x" * 16, "ADMIN_URL": "http://127.0.0.1", "MAX_CLOCK_SKEW": 0}, ["tether.E008"]),
    ],
)
def test_settings_errors(settings, tether, expected):
    settings.TETHER = tether
    assert ids() == expected


def test_tether_must_be_a_dict(settings):
    settings.TETHER = "secret"
    assert ids() == ["tether.E001"]


def test_the_checks_run_with_manage_py_check(settings):
    settings.TETHER = {}
    found = {m.id for m in run_checks(tags=["tether"])}
    assert {"tether.E003", "tether.W001"} <= found


def test_the_hasher_should_be_first(settings):
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        "django_tether.hashers.ScramSHA256PasswordHasher",
    ]
    assert [m.id for m in checks.check_hasher()] == ["tether.W002"]
    settings.PASSWORD_HASHERS = settings.PASSWORD_HASHERS[::-1]
    assert checks.check_hasher() == []


def test_a_handler_for_a_server_builtin_is_pointed_out():
    registry.method("echo")(lambda request, args: args)
    try:
        warnings = checks.check_handlers()
        assert [w.id for w in warnings] == ["tether.W003"]
        assert "--forward-builtin echo" in warnings[0].hint
    finally:
        registry.unregister("method", "echo")
