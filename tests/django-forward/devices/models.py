from django.db import models


class Note(models.Model):
    """What the `note` method writes: the ORM round trip of a device call."""

    user_id = models.BigIntegerField()
    session = models.BigIntegerField()
    text = models.TextField()

    class Meta:
        # Only users with devices.connect may log in (tether serve
        # --require-perm devices.connect).
        permissions = [("connect", "May connect a device")]


class Delivery(models.Model):
    """A notification or session event as received (once per request id)."""

    request_id = models.CharField(max_length=32, unique=True)
    kind = models.CharField(max_length=8)  # notify, event
    name = models.TextField()  # the notification's name, or the event
    body = models.BinaryField()
    session = models.BigIntegerField()
    user_id = models.BigIntegerField()
