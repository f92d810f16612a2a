"""manage.py ask_device USERNAME [METHOD]: Django calls a user's device and prints the answer."""

import json

from django.core.management.base import BaseCommand, CommandError

import django_tether
from django_tether import postcard


class Command(BaseCommand):
    help = "Calls device_info (or echo TEXT) on a user's device through tether serve's admin API."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--echo", help="call echo with this text instead of device_info")
        parser.add_argument("--timeout", type=float, default=5.0)

    def handle(self, username, echo=None, timeout=5.0, **options):
        try:
            if echo is not None:
                answer = django_tether.call(username, "echo", echo, codec=postcard.ECHO, timeout=timeout)
            else:
                answer = django_tether.call(username, "device_info", codec=postcard.DEVICE_INFO, timeout=timeout)
        except django_tether.TetherError as e:
            raise CommandError("%s: %s" % (type(e).__name__, e)) from None
        self.stdout.write(json.dumps(answer))
