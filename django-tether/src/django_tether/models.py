"""Tables of django_tether: the delivered request ids, and the admin page's model."""

import threading
import time
from datetime import timedelta

from django.db import IntegrityError, models, router, transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from . import conf

# Call ids only need remembering while their signature's timestamp is valid.
PRUNE_EVERY = 60.0  # seconds between two prunes in one process
_pruned = {"at": 0.0}
_prune_lock = threading.Lock()


class SeenRequestManager(models.Manager):
    def record(self, request_id, kind):
        """Stores a forwarded request's id; False if it was stored before.

        Called inside the caller's transaction: if the handler fails and the
        transaction rolls back, the id is forgotten and a retry runs again.
        """
        db = router.db_for_write(self.model)
        try:
            with transaction.atomic(using=db):
                self.using(db).create(request_id=request_id, kind=kind)
        except IntegrityError:
            return False
        return True

    def prune(self, now=None):
        """Forgets ids no retry can repeat: calls after twice the clock skew, others after DEDUP_RETENTION."""
        now = now or timezone.now()
        skew = float(conf.get("MAX_CLOCK_SKEW"))
        retention = float(conf.get("DEDUP_RETENTION"))
        qs = self.using(router.db_for_write(self.model))
        n, _ = qs.filter(kind=SeenRequest.CALL, seen_at__lt=now - timedelta(seconds=2 * skew)).delete()
        m, _ = qs.exclude(kind=SeenRequest.CALL).filter(seen_at__lt=now - timedelta(seconds=retention)).delete()
        return n + m

    def prune_now_and_then(self):
        """prune(), at most once a minute per process."""
        with _prune_lock:
            if time.monotonic() - _pruned["at"] < PRUNE_EVERY and _pruned["at"]:
                return
            _pruned["at"] = time.monotonic()
        self.prune()


class SeenRequest(models.Model):
    """A forwarded request already handled (delivery is at least once)."""

    CALL, NOTIFY, EVENT = "call", "notify", "event"
    KINDS = [(CALL, "call"), (NOTIFY, "notification"), (EVENT, "event")]

    request_id = models.CharField(max_length=32, primary_key=True)
    kind = models.CharField(max_length=6, choices=KINDS)
    seen_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = SeenRequestManager()

    class Meta:
        verbose_name = _("forwarded request seen")
        verbose_name_plural = _("forwarded requests seen")
        default_permissions = ()

    def __str__(self):
        return "%s %s" % (self.kind, self.request_id)


class LiveSession(models.Model):
    """No table: the admin's "live device sessions" page reads the server's admin API.

    Its permissions decide who may see the page (``view_livesession``) and
    who may end a session (``disconnect_livesession``).
    """

    class Meta:
        managed = False
        verbose_name = _("live device session")
        verbose_name_plural = _("live device sessions")
        default_permissions = ("view",)
        permissions = [("disconnect_livesession", _("Can disconnect device sessions"))]
