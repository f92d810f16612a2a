import io

import pytest
from django.contrib.auth.hashers import get_hasher
from django.core.management import CommandError, call_command

from django_tether.hashers import verifier_of

pytestmark = pytest.mark.django_db


def run(*args):
    out = io.StringIO()
    call_command("tether_convert_hashes", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def rows(django_user_model):
    pbkdf2 = get_hasher("pbkdf2_sha256")
    users = {}
    for name in ("a", "b", "c"):
        u = django_user_model.objects.create_user(name)
        u.password = pbkdf2.encode(name + "-pw", "salt" + name * 12, 1000)
        u.save()
        users[name] = u
    sha1 = django_user_model.objects.create_user("old", password=None)
    sha1.password = get_hasher("pbkdf2_sha1").encode("old-pw", "saltsaltsalt", 1000)
    sha1.save()
    django_user_model.objects.create_user("none", password=None)
    django_user_model.objects.create_user("new", password="new-pw")
    return users


def test_converts_pbkdf2_sha256_rows_keeping_the_verifier(rows, django_user_model):
    before = {u.username: u.password for u in rows.values()}
    out = run("--batch-size", "2")
    assert "converted 3 pbkdf2_sha256 row(s) to scram_sha256" in out
    assert "pbkdf2_sha1" in out and "new salt" in out
    assert "unusable" in out
    for name, old in before.items():
        user = django_user_model.objects.get(username=name)
        assert user.password.startswith("scram_sha256$1000$salt" + name * 12 + "$")
        assert verifier_of(user.password) == verifier_of(old)
        assert user.check_password(name + "-pw")
    assert "converted 0" in run()


def test_rows_that_would_not_fit_the_column_are_left(django_user_model):
    user = django_user_model.objects.create_user("longsalt")
    user.password = get_hasher("pbkdf2_sha256").encode("pw", "s" * 40, 1000)
    user.save()
    out = run()
    assert "left 1 pbkdf2_sha256 row(s)" in out
    user.refresh_from_db()
    assert user.password.startswith("pbkdf2_sha256$")


def test_dry_run_changes_nothing(rows, django_user_model):
    out = run("--dry-run")
    assert "would convert 3" in out
    assert django_user_model.objects.filter(password__startswith="pbkdf2_sha256$").count() == 3


def test_refuses_without_the_hasher(rows, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    with pytest.raises(CommandError, match="not in PASSWORD_HASHERS"):
        run()
