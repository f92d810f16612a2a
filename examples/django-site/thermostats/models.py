from django.conf import settings
from django.db import models


class Reading(models.Model):
    """A temperature a device reported."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="readings")
    celsius = models.FloatField()
    at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return "%s: %.1f °C" % (self.owner, self.celsius)


class Setpoint(models.Model):
    """What the site wants a user's thermostat to hold."""

    owner = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    target_celsius = models.FloatField(default=20.5)


class DeviceEvent(models.Model):
    """Connections, disconnections and button presses, as Django heard of them."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    username = models.CharField(max_length=150)
    session_id = models.BigIntegerField(null=True)
    kind = models.CharField(max_length=20)
    detail = models.CharField(max_length=100, blank=True)
    at = models.DateTimeField()

    class Meta:
        ordering = ["at", "pk"]

    def __str__(self):
        return "%s %s %s" % (self.username, self.kind, self.detail)
