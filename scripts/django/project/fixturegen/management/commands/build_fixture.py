"""Build one Tether test database with Django itself, and describe it as JSON.

    TETHER_DATABASE_URL=sqlite:////tmp/x.sqlite3 manage.py build_fixture \
        --profile full --recreate-database --manifest-part /tmp/x.json

Every table comes from `migrate`, every hash from Django's hashers
(make_password / set_unusable_password), every row from the ORM, and every
`has_connect_perm` from `user.has_perm`. Nothing is hand-written.
"""
import datetime
import json
import os
import platform

import django
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import (
    PBKDF2PasswordHasher,
    PBKDF2SHA1PasswordHasher,
    check_password,
    identify_hasher,
    make_password,
)
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.db.migrations.recorder import MigrationRecorder
from django_tether.hashers import ScramSHA256PasswordHasher

from fixturegen.users import GROUP, PERMISSION, PROFILES
from tether_project.hashers import PBKDF2Iter260000PasswordHasher

# date_joined and django_migrations.applied are set to this instant so that
# regenerated databases differ only where Django is random (salts, '!' hashes).
FIXED_TIME = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)

SCRAM_MECHANISM = {
    "pbkdf2_sha256": "SCRAM-SHA-256",
    "pbkdf2_sha1": "SCRAM-SHA-1",
    "scram_sha256": "SCRAM-SHA-256",
}


def hasher_for(name):
    if name == "pbkdf2_sha256@260000":
        return PBKDF2Iter260000PasswordHasher()
    return name  # an algorithm name, looked up in settings.PASSWORD_HASHERS


def m2m_description(model, field_name, other_key):
    field = model._meta.get_field(field_name)
    return {
        "table": field.remote_field.through._meta.db_table,
        "user_column": field.m2m_column_name(),
        other_key: field.m2m_reverse_name(),
    }


class Command(BaseCommand):
    help = "Migrate the configured database and create the Tether test users."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--profile", choices=sorted(PROFILES), required=True)
        parser.add_argument(
            "--recreate-database",
            action="store_true",
            help="delete the SQLite file / drop and create the server database first",
        )
        parser.add_argument(
            "--allow-any-name",
            action="store_true",
            help="allow dropping a server database whose name does not start "
            "with 'tether_'",
        )
        parser.add_argument("--manifest-part", help="write the JSON description here")
        parser.add_argument("--file", help="name of the database file, for the manifest")
        parser.add_argument("--page-size", type=int, default=0,
                            help="SQLite: VACUUM into this page size at the end")

    def handle(self, *args, **opts):
        db = settings.DATABASES["default"]
        vendor = connection.vendor
        if opts["recreate_database"]:
            self.recreate(db, vendor, opts["allow_any_name"])

        call_command("migrate", interactive=False, verbosity=0)
        with transaction.atomic():
            MigrationRecorder.Migration.objects.update(applied=FIXED_TIME)
            users = self.create_users(PROFILES[opts["profile"]])

        if vendor == "sqlite":
            with connection.cursor() as cursor:
                if opts["page_size"]:
                    cursor.execute("PRAGMA page_size = %d" % opts["page_size"])
                cursor.execute("VACUUM")
        manifest = self.describe(db, vendor, opts, users)
        connection.close()

        if opts["manifest_part"]:
            with open(opts["manifest_part"], "w", encoding="utf-8") as f:
                json.dump(manifest, f, ensure_ascii=False, indent=2)
                f.write("\n")
        for u in users:
            self.stdout.write(
                "  %-22s %-14s %-9s active=%-5s connect=%s"
                % (u["username"], u["algorithm"], u["iterations"], u["is_active"],
                   u["has_connect_perm"])
            )

    # ------------------------------------------------------------------ setup

    def recreate(self, db, vendor, allow_any_name):
        name = db["NAME"]
        if vendor == "sqlite":
            for suffix in ("", "-journal", "-wal", "-shm"):
                if os.path.exists(name + suffix):
                    os.remove(name + suffix)
            return
        if not name.startswith("tether_") and not allow_any_name:
            raise CommandError(
                "refusing to drop database %r: its name does not start with "
                "'tether_' (pass --allow-any-name to insist)" % name
            )
        host, port = db["HOST"] or "127.0.0.1", int(db["PORT"])
        user, password = db["USER"] or None, db["PASSWORD"] or None
        if vendor == "postgresql":
            import psycopg
            from psycopg import sql

            with psycopg.connect(host=host, port=port, user=user, password=password,
                                 dbname="postgres", autocommit=True) as conn:
                ident = sql.Identifier(name)
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
                conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0")
                             .format(ident))
        elif vendor == "mysql":
            import pymysql

            conn = pymysql.connect(host=host, port=port, user=user or "root",
                                   password=password or "", charset="utf8mb4")
            try:
                with conn.cursor() as cur:
                    quoted = "`%s`" % name.replace("`", "``")
                    cur.execute("DROP DATABASE IF EXISTS " + quoted)
                    cur.execute("CREATE DATABASE " + quoted + " CHARACTER SET utf8mb4")
            finally:
                conn.close()
        else:
            raise CommandError("cannot recreate a %s database" % vendor)

    def create_users(self, specs):
        User = get_user_model()
        app_label, codename = PERMISSION.split(".")
        perm = Permission.objects.get(content_type__app_label=app_label, codename=codename)
        group = Group.objects.create(name=GROUP)
        group.permissions.add(perm)
        groups = {GROUP: group}
        perms = {PERMISSION: perm}

        created = []
        for spec in specs:
            ident = {User.USERNAME_FIELD: spec["username"]}
            extra = {}
            if "date_joined" in {f.name for f in User._meta.get_fields()}:
                extra["date_joined"] = FIXED_TIME
            if spec.get("superuser"):
                user = User.objects.create_superuser(**ident, password=None, **extra)
            else:
                user = User.objects.create_user(**ident, password=None, **extra)
            # create_user(password=None) called set_unusable_password(); give the
            # row the hash the spec asks for, made by Django's hasher.
            if spec["password"] is not None:
                user.password = make_password(spec["password"], hasher=hasher_for(spec["hasher"]))
            user.is_active = spec.get("is_active", True)
            user.save()
            for g in spec.get("groups", []):
                user.groups.add(groups[g])
            for p in spec.get("user_permissions", []):
                user.user_permissions.add(perms[p])
            created.append((spec, user.pk))

        out = []
        for spec, pk in created:
            user = User.objects.get(pk=pk)  # fresh: no cached permissions
            assert user.last_login is None
            encoded = user.password
            pw = spec["password"]
            entry = {
                "id": user.pk,
                "username": user.get_username(),
                "password": pw,
                "password_hash": encoded,
                "usable_password": user.has_usable_password(),
                "algorithm": None,
                "iterations": None,
                "salt": None,
                "scram_mechanism": None,
                "django_decode": None,
                "is_active": user.is_active,
                "is_staff": user.is_staff,
                "is_superuser": user.is_superuser,
                "groups": sorted(user.groups.values_list("name", flat=True)),
                "user_permissions": sorted(
                    "%s.%s" % (a, c)
                    for a, c in user.user_permissions.values_list(
                        "content_type__app_label", "codename")
                ),
                "has_connect_perm": user.has_perm(PERMISSION),
                "django_version": django.get_version(),
                "note": spec["note"],
            }
            if pw is not None:
                hasher = identify_hasher(encoded)
                decoded = hasher.decode(encoded)
                entry["algorithm"] = encoded.split("$", 1)[0]
                assert entry["algorithm"] == hasher.algorithm
                entry["iterations"] = decoded.get("iterations")
                entry["salt"] = decoded.get("salt")
                entry["scram_mechanism"] = SCRAM_MECHANISM.get(entry["algorithm"])
                entry["django_decode"] = {
                    k: v for k, v in decoded.items() if isinstance(v, (str, int))
                }
                # Django itself accepts the published password (module-level
                # check_password: no setter, so the row is never re-hashed).
                # PBKDF2 and scram_sha256 rows are skipped here only because
                # they are slow and selfcheck.py runs SCRAM on them anyway.
                if entry["scram_mechanism"] is None and not check_password(pw, encoded):
                    raise CommandError("Django rejects the password of %r" % entry["username"])
            else:
                assert encoded.startswith("!") and not user.has_usable_password()
            if entry["username"] != spec["username"]:
                raise CommandError("Django changed username %r to %r"
                                   % (spec["username"], entry["username"]))
            out.append(entry)
        return out

    # --------------------------------------------------------------- manifest

    def describe(self, db, vendor, opts, users):
        User = get_user_model()
        meta = User._meta
        perm_app, perm_codename = PERMISSION.split(".")
        perm = Permission.objects.get(content_type__app_label=perm_app, codename=perm_codename)
        group = Group.objects.get(name=GROUP)
        col = lambda name: meta.get_field(name).column  # noqa: E731
        desc = {
            "file": opts["file"] or None,
            "engine": vendor,
            "database_name": None if vendor == "sqlite" else db["NAME"],
            "django_version": django.get_version(),
            "python_version": platform.python_version(),
            "settings_module": os.environ.get("DJANGO_SETTINGS_MODULE"),
            "profile": opts["profile"],
            "user_model": meta.label,
            "user_table": meta.db_table,
            "username_column": col(User.USERNAME_FIELD),
            "columns": {
                "id": meta.pk.column,
                "username": col(User.USERNAME_FIELD),
                "password": col("password"),
                "is_active": col("is_active"),
                "is_superuser": col("is_superuser"),
                "is_staff": col("is_staff"),
                "last_login": col("last_login"),
            },
            "group_table": Group._meta.db_table,
            "permission_table": Permission._meta.db_table,
            "user_groups": m2m_description(User, "groups", "group_column"),
            "user_permissions": m2m_description(User, "user_permissions", "permission_column"),
            "group_permissions": {
                "table": Group._meta.get_field("permissions").remote_field.through._meta.db_table,
                "group_column": Group._meta.get_field("permissions").m2m_column_name(),
                "permission_column": Group._meta.get_field("permissions").m2m_reverse_name(),
            },
            "connect_permission": {
                "name": PERMISSION,
                "app_label": perm_app,
                "codename": perm_codename,
                "description": perm.name,
                "id": perm.pk,
                "content_type_id": perm.content_type_id,
            },
            "groups": {group.name: {"id": group.pk,
                                     "permissions": [PERMISSION]}},
            "default_iterations": {
                "pbkdf2_sha256": PBKDF2PasswordHasher.iterations,
                "pbkdf2_sha1": PBKDF2SHA1PasswordHasher.iterations,
                "scram_sha256": ScramSHA256PasswordHasher().target_iterations(),
            },
            "users": users,
        }
        if vendor == "mysql":
            with connection.cursor() as cur:
                cur.execute("SELECT @@character_set_database, @@collation_database")
                charset, collation = cur.fetchone()
            desc["charset"], desc["collation"] = charset, collation
        return desc
