"""Revocation at once: a user deactivated, deleted or with a new password loses its device sessions.

pre_save reads the stored row; post_save asks the server to revoke after the
transaction commits (``transaction.on_commit``), so the server never re-reads
a row that is about to roll back. A failure is logged and never breaks the
save: the server's revalidation (``tether serve --revalidate``) is the
backstop, as it is for ``QuerySet.update()``, which sends no signals.

A password change that keeps the SCRAM verifier (``manage.py
tether_convert_hashes`` turns pbkdf2_sha256 rows into scram_sha256 ones with
the same salt and iterations) revokes nothing: the device's keys still work.
"""

import logging

from django.contrib.auth.hashers import is_password_usable
from django.db import transaction

from . import client, conf
from .exceptions import TetherError
from .hashers import verifier_of

logger = logging.getLogger("django_tether")

_WATCHED = frozenset({"password", "is_active"})
_FLAG = "_tether_revoke_reason"


def _needs_check(instance, raw, update_fields):
    if raw or instance.pk is None or not conf.get("REVOKE_ON_CHANGE"):
        return False
    return update_fields is None or bool(_WATCHED & set(update_fields))


def user_pre_save(sender, instance, raw=False, using=None, update_fields=None, **kwargs):
    """Notes on the instance why its sessions must end, if they must."""
    setattr(instance, _FLAG, None)
    if not _needs_check(instance, raw, update_fields):
        return
    fields = ["password"] + (["is_active"] if _has_field(sender, "is_active") else [])
    old = sender._default_manager.using(using).filter(pk=instance.pk).values(*fields).first()
    if old is None:
        return
    reason = None
    if old.get("is_active", True) and not getattr(instance, "is_active", True):
        reason = "deactivated"
    elif old["password"] != instance.password and is_password_usable(old["password"]):
        # (No device can have logged in with an unusable password: nothing to end.)
        before, after = verifier_of(old["password"]), verifier_of(instance.password)
        if before is None or after is None or before != after:
            reason = "password changed"
    setattr(instance, _FLAG, reason)


def user_post_save(sender, instance, created=False, using=None, **kwargs):
    reason = getattr(instance, _FLAG, None)
    if reason:
        setattr(instance, _FLAG, None)
        _revoke_on_commit(instance.pk, instance.get_username(), reason, using)


def user_post_delete(sender, instance, using=None, **kwargs):
    if conf.get("REVOKE_ON_CHANGE") and instance.pk is not None:
        _revoke_on_commit(instance.pk, instance.get_username(), "deleted", using)


def _has_field(model, name):
    try:
        model._meta.get_field(name)
        return True
    except Exception:
        return False


def _revoke_on_commit(user_id, username, reason, using):
    if not client.is_configured():
        logger.debug("tether: %s was %s; no ADMIN_URL, revalidation will end its sessions", username, reason)
        return
    transaction.on_commit(lambda: revoke_now(user_id, username, reason), using=using)


def revoke_now(user_id, username, reason):
    """POST /revoke for one user; logs the outcome, never raises."""
    try:
        ended = client.revoke(user_id=user_id)
    except TetherError as e:
        logger.warning(
            "tether: could not revoke the sessions of %r (%s): %s; the server's revalidation will end them",
            username,
            reason,
            e,
        )
        return None
    except Exception:  # never break the save that triggered this
        logger.exception("tether: revoking the sessions of %r (%s) failed", username, reason)
        return None
    if ended:
        logger.info("tether: %s was %s: ended sessions %s", username, reason, ended)
    return ended
