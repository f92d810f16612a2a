"""Revocation at once: POST /revoke after the commit of a deactivation, deletion or password change."""

import logging

import pytest
from django.db import transaction

from django_tether.hashers import scram_sha256_from_pbkdf2_sha256

pytestmark = pytest.mark.django_db(transaction=True)


def revokes(fake_admin):
    return [r.json() for r in fake_admin.requests if r.path == "/revoke"]


def test_deactivating_a_user_revokes_after_the_commit(fake_admin, alice):
    with transaction.atomic():
        alice.is_active = False
        alice.save()
        assert revokes(fake_admin) == []  # not before the commit
    assert revokes(fake_admin) == [{"user_id": alice.pk}]


def test_a_rolled_back_deactivation_revokes_nothing(fake_admin, alice):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            alice.is_active = False
            alice.save()
            raise RuntimeError
    assert revokes(fake_admin) == []


def test_a_password_change_revokes(fake_admin, alice):
    alice.set_password("new password")
    alice.save()
    assert revokes(fake_admin) == [{"user_id": alice.pk}]


def test_deleting_a_user_revokes(fake_admin, alice):
    pk = alice.pk
    alice.delete()
    assert revokes(fake_admin) == [{"user_id": pk}]


def test_saves_that_change_nothing_that_matters_revoke_nothing(fake_admin, alice):
    alice.first_name = "Alice"
    alice.save()
    alice.save(update_fields=["last_login"])
    alice.is_active = True
    alice.save()
    assert revokes(fake_admin) == []


def test_a_first_password_revokes_nothing(fake_admin, django_user_model):
    user = django_user_model.objects.create_user("new")  # unusable password
    user.set_password("first password")
    user.save()
    assert revokes(fake_admin) == []


def test_reactivating_revokes_nothing(fake_admin, alice):
    type(alice).objects.filter(pk=alice.pk).update(is_active=False)
    alice.refresh_from_db()
    alice.is_active = True
    alice.save()
    assert revokes(fake_admin) == []


def test_a_conversion_that_keeps_the_verifier_revokes_nothing(fake_admin, alice):
    from django.contrib.auth.hashers import get_hasher

    pbkdf2 = get_hasher("pbkdf2_sha256").encode("pw", "saltsaltsaltsalt", 1000)
    type(alice).objects.filter(pk=alice.pk).update(password=pbkdf2)
    alice.refresh_from_db()
    alice.password = scram_sha256_from_pbkdf2_sha256(pbkdf2)
    alice.save()
    assert revokes(fake_admin) == []
    # Django's upgrade at a site login picks a new salt: that does revoke.
    type(alice).objects.filter(pk=alice.pk).update(password=pbkdf2)
    alice.refresh_from_db()
    assert alice.check_password("pw")
    assert revokes(fake_admin) == [{"user_id": alice.pk}]


def test_a_failing_admin_api_never_breaks_the_save(fake_admin, alice, caplog):
    fake_admin.routes[("POST", "/revoke")] = (503, {"error": "unavailable", "message": "down"})
    with caplog.at_level(logging.WARNING, logger="django_tether"):
        alice.is_active = False
        alice.save()
    alice.refresh_from_db()
    assert alice.is_active is False
    assert "could not revoke the sessions of 'alice' (deactivated)" in caplog.text
    assert "revalidation" in caplog.text


def test_an_unreachable_admin_api_never_breaks_the_save(settings, alice, caplog):
    settings.TETHER = {**settings.TETHER, "ADMIN_URL": "http://127.0.0.1:9"}
    with caplog.at_level(logging.WARNING, logger="django_tether"):
        alice.set_password("hunter2-secret")
        alice.save()
    assert "could not revoke the sessions of 'alice' (password changed)" in caplog.text
    assert "hunter2" not in caplog.text and "scram_sha256$" not in caplog.text


def test_it_can_be_turned_off(fake_admin, alice, settings):
    settings.TETHER = {**settings.TETHER, "REVOKE_ON_CHANGE": False}
    alice.is_active = False
    alice.save()
    alice.delete()
    assert revokes(fake_admin) == []


def test_without_an_admin_url_nothing_is_sent(settings, alice):
    settings.TETHER = {**settings.TETHER, "ADMIN_URL": None}
    alice.is_active = False
    alice.save()  # no exception, no request: revalidation is the backstop
