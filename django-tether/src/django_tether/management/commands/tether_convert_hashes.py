"""Converts pbkdf2_sha256 rows to scram_sha256 now, without passwords, keeping devices' keys.

A pbkdf2_sha256 row holds SaltedPassword, from which the SCRAM verifier
follows; the scram_sha256 row keeps the salt and the iteration count, so keys
a device cached still log it in. Converting at the users' next login on the
site instead (Django's automatic upgrade) picks a new salt and breaks those keys.
"""

from collections import Counter

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import get_hashers_by_algorithm, identify_hasher
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS

from django_tether.hashers import ALGORITHM, scram_sha256_from_pbkdf2_sha256


class Command(BaseCommand):
    help = (
        "Converts pbkdf2_sha256 password rows to scram_sha256 (same salt and iterations: "
        "device keys keep working; no password needed)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="count, change nothing")
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)

    def handle(self, *args, dry_run=False, batch_size=500, database=DEFAULT_DB_ALIAS, **options):
        if ALGORITHM not in get_hashers_by_algorithm():
            raise CommandError(
                "django_tether.hashers.ScramSHA256PasswordHasher is not in PASSWORD_HASHERS: "
                "Django could not check the converted passwords. Add it (first) and run again."
            )
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        model = get_user_model()
        manager = model._default_manager.using(database)
        # Django's column is varchar(128): a longer row would not be stored.
        max_length = model._meta.get_field("password").max_length
        converted = skipped = too_long = 0
        last_pk = None
        while True:
            batch = manager.filter(password__startswith="pbkdf2_sha256$").order_by("pk")
            if last_pk is not None:
                batch = batch.filter(pk__gt=last_pk)
            rows = list(batch.values_list("pk", "password")[:batch_size])
            if not rows:
                break
            for pk, old in rows:
                last_pk = pk
                try:
                    new = scram_sha256_from_pbkdf2_sha256(old)
                except ValueError:
                    skipped += 1
                    continue
                if max_length is not None and len(new) > max_length:
                    too_long += 1
                    continue
                # Only if nobody changed the row meanwhile.
                if dry_run or manager.filter(pk=pk, password=old).update(password=new):
                    converted += 1
        left = Counter()
        for password in manager.exclude(password__startswith=ALGORITHM + "$").values_list("password", flat=True).iterator():
            try:
                left[identify_hasher(password).algorithm] += 1
            except ValueError:
                left["unusable" if not password or password.startswith("!") else "unknown"] += 1
        verb = "would convert" if dry_run else "converted"
        self.stdout.write("%s %d pbkdf2_sha256 row(s) to scram_sha256" % (verb, converted))
        if skipped:
            self.stdout.write(self.style.WARNING("skipped %d malformed pbkdf2_sha256 row(s)" % skipped))
        if too_long:
            self.stdout.write(
                self.style.WARNING(
                    "left %d pbkdf2_sha256 row(s) whose salt makes the scram_sha256 row longer than "
                    "the password column (%d); they convert at the next login on the site" % (too_long, max_length)
                )
            )
        for algorithm, n in sorted(left.items()):
            if algorithm == "pbkdf2_sha256" and dry_run:
                continue
            note = {
                "unusable": "no usable password",
                "unknown": "not a known hash",
            }.get(algorithm, "converts when the user next logs in on the site (new salt: devices need the password once)")
            self.stdout.write("  %-14s %6d  %s" % (algorithm, n, note))
