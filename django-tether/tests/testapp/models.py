from django.conf import settings
from django.db import models


class Reading(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    celsius = models.FloatField()


class Press(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    button = models.CharField(max_length=20)


class Connection(models.Model):
    username = models.CharField(max_length=150)
    session_id = models.BigIntegerField()
    event = models.CharField(max_length=20)
    reason = models.CharField(max_length=20, blank=True)
    had_user = models.BooleanField()
