"""manage.py add_device_user USERNAME: a user a device logs in as (password from TETHER_DEVICE_PASSWORD or a prompt)."""

import getpass
import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Creates (or re-passwords) a user for a device; the row is scram_sha256 (PASSWORD_HASHERS)."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, username, **options):
        password = os.environ.get("TETHER_DEVICE_PASSWORD") or getpass.getpass("password for %s: " % username)
        if not password:
            raise CommandError("an empty password cannot log a device in")
        user, created = get_user_model().objects.get_or_create(username=username)
        user.set_password(password)
        user.save()
        self.stdout.write(
            "%s %s (%s)" % ("created" if created else "updated", username, user.password.split("$", 1)[0])
        )
