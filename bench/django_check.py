"""Django's own password check on the benchmark's rows: what any server that
verifies a Django hash per login must do (PBKDF2 at the row's iterations).

    python bench/django_check.py --database db.sqlite3 --manifest users.json --seconds 10

One process per core (os.cpu_count()), each running
`django.contrib.auth.hashers.check_password(password, row.password)` over
the users' rows (read with the ORM) for the given time. Prints JSON:
{"rate": checks per second, all processes, ...}.
"""
import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "scripts" / "django" / "project"


def setup(database):
    os.environ["TETHER_DATABASE_URL"] = "sqlite:///" + str(Path(database).resolve())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tether_project.settings")
    sys.path.insert(0, str(PROJECT))
    import django

    django.setup()


def worker(args):
    database, manifest_path, seconds, start_at, index = args
    setup(database)
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import check_password

    manifest = json.loads(Path(manifest_path).read_text())
    passwords = manifest["passwords"]
    prefix = manifest["prefix"]
    rows = list(
        get_user_model()
        .objects.filter(username__startswith=prefix)
        .order_by("id")
        .values_list("username", "password")[:1000]
    )
    # Start together, after every process has imported Django.
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.monotonic()
    deadline = t0 + seconds
    done = 0
    i = index
    while True:
        username, encoded = rows[i % len(rows)]
        number = int(username[len(prefix):])
        if not check_password(passwords[number % len(passwords)], encoded):
            raise SystemExit("check_password refused the right password for %s" % username)
        done += 1
        i += 1
        if time.monotonic() >= deadline:
            break
    return done, time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--database", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--procs", type=int, default=os.cpu_count())
    args = ap.parse_args()
    start_at = time.time() + 2.0
    with multiprocessing.get_context("spawn").Pool(args.procs) as pool:
        results = pool.map(
            worker,
            [(args.database, args.manifest, args.seconds, start_at, k) for k in range(args.procs)],
        )
    checks = sum(n for n, _ in results)
    rate = sum(n / t for n, t in results)
    import django

    print(
        json.dumps(
            {
                "rate": rate,
                "checks": checks,
                "procs": args.procs,
                "seconds_per_check": args.procs / rate,
                "django": django.get_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
