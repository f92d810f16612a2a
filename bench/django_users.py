"""Create the benchmark's SQLite database with real Django.

    python bench/django_users.py --database /tmp/x/db.sqlite3 --manifest /tmp/x/users.json \
        --users 10000 --passwords 4

Runs `migrate` for the project in scripts/django/project (Django's own auth
schema plus the fixture apps), then creates N active users `bench-0` ..
`bench-{N-1}` through the ORM (bulk_create). Hashes come from Django's own
`make_password` with the default hasher (pbkdf2_sha256) at Django's default
iteration count (1,000,000 in 5.2). At ~0.3 s per hash, N hashes would take
an hour, so only one hash is computed per distinct password: user i gets
password i % P and that password's hash (same salt for the users sharing a
password). Every row is still a genuine Django hash that Django's
check_password accepts, and the server reads each user's own row.

The manifest (JSON) tells the load generator the usernames, the passwords and
their hashes; it never contains anything a real deployment would have.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "scripts" / "django" / "project"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--database", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--passwords", type=int, default=4)
    ap.add_argument("--prefix", default="bench-")
    args = ap.parse_args()

    db = Path(args.database).resolve()
    if db.exists():
        db.unlink()
    os.environ["TETHER_DATABASE_URL"] = "sqlite:///" + str(db)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tether_project.settings")
    sys.path.insert(0, str(PROJECT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import check_password, get_hasher, make_password
    from django.core.management import call_command

    t0 = time.monotonic()
    call_command("migrate", verbosity=0, interactive=False)
    t_migrate = time.monotonic() - t0

    passwords = ["bench-password-%d" % k for k in range(args.passwords)]
    t0 = time.monotonic()
    hashes = [make_password(p) for p in passwords]
    t_hash = time.monotonic() - t0
    for p, h in zip(passwords, hashes):
        assert check_password(p, h), "Django does not accept its own hash"

    User = get_user_model()
    t0 = time.monotonic()
    batch = []
    for i in range(args.users):
        batch.append(
            User(
                username="%s%d" % (args.prefix, i),
                password=hashes[i % len(hashes)],
                is_active=True,
            )
        )
        if len(batch) == 2000:
            User.objects.bulk_create(batch)
            batch = []
    if batch:
        User.objects.bulk_create(batch)
    t_users = time.monotonic() - t0
    count = User.objects.filter(username__startswith=args.prefix).count()
    assert count == args.users, (count, args.users)

    manifest = {
        "django": django.get_version(),
        "users": args.users,
        "prefix": args.prefix,
        "passwords": passwords,
        "hashes": hashes,
        "hasher": get_hasher().algorithm,
        "iterations": get_hasher().iterations,
    }
    Path(args.manifest).write_text(json.dumps(manifest, indent=1))
    print(
        "django_users: Django %s: migrate %.1f s; %d make_password (%s, %d iterations) %.1f s; "
        "%d users %.1f s -> %s"
        % (
            django.get_version(),
            t_migrate,
            len(hashes),
            get_hasher().algorithm,
            get_hasher().iterations,
            t_hash,
            args.users,
            t_users,
            db,
        ),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
