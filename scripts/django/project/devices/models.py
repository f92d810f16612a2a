from django.db import models


class Device(models.Model):
    """A device that logs in through Tether.

    The model exists mainly for its custom permission: Django creates
    ``devices.connect`` ("Can connect via Tether") from ``Meta.permissions``.
    """

    name = models.CharField(max_length=100, unique=True)

    class Meta:
        permissions = [("connect", "Can connect via Tether")]

    def __str__(self):
        return self.name
