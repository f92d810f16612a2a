"""Prove that the Django-made rows fit SCRAM, with scramp as an independent peer.

    selfcheck.py --manifest fixtures/django/users.json [--dir fixtures/django]
    selfcheck.py --manifest part.json --url postgres://postgres@127.0.0.1/tether_test

For every pbkdf2 and scram_sha256 user of every database the manifest lists,
it reads the row straight from the database (sqlite3 / psycopg / PyMySQL, not
Django), takes the SCRAM server keys from a scram_sha256 row as they are, or
derives them from a pbkdf2 row the way the Tether server does:

    SaltedPassword = base64decode(hash)          (Django already computed it)
    salt           = the salt string's bytes     (not base64-decoded)
    StoredKey      = H(HMAC(SaltedPassword, "Client Key"))
    ServerKey      = HMAC(SaltedPassword, "Server Key")

and runs a full exchange, scramp server <-> scramp client:
  * the published password must log in, and the client must accept the server
    signature (mutual authentication);
  * a wrong password must be refused;
  * for a password that SASLprep changes, a standard (SASLprep) client must be
    refused and a raw-UTF-8 client must log in: Django hashes raw UTF-8.
It also checks the manifest against the rows (usernames, hashes, iterations).
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import sqlite3
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit

import scramp
import scramp.core
from scramp.utils import saslprep

HASHES = {"pbkdf2_sha256": ("SCRAM-SHA-256", hashlib.sha256),
          "pbkdf2_sha1": ("SCRAM-SHA-1", hashlib.sha1),
          "scram_sha256": ("SCRAM-SHA-256", hashlib.sha256)}


# ----------------------------------------------------------------- database

def connect(db, directory, url):
    if url is None:
        path = os.path.join(directory, db["file"])
        if not os.path.exists(path):
            raise SystemExit("selfcheck: missing %s" % path)
        return sqlite3.connect("file:%s?mode=ro" % path, uri=True), '"'
    parts = urlsplit(url)
    kw = dict(host=parts.hostname or "127.0.0.1", port=parts.port,
              user=unquote(parts.username or "") or None,
              password=unquote(parts.password or "") or None)
    name = unquote(parts.path.lstrip("/"))
    if parts.scheme.startswith("postgres"):
        import psycopg

        return psycopg.connect(dbname=name, **{k: v for k, v in kw.items() if v}), '"'
    import pymysql

    return pymysql.connect(database=name, charset="utf8mb4", port=kw["port"] or 3306,
                           host=kw["host"], user=kw["user"] or "root",
                           password=kw["password"] or ""), "`"


def read_rows(db, directory, url):
    conn, q = connect(db, directory, url)
    c = db["columns"]
    sql = "SELECT {q}{u}{q}, {q}{p}{q}, {q}{a}{q} FROM {q}{t}{q} ORDER BY {q}{i}{q}".format(
        q=q, u=c["username"], p=c["password"], a=c["is_active"], t=db["user_table"],
        i=c["id"])
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return [(u, p, bool(a)) for u, p, a in cur.fetchall()]
    finally:
        conn.close()


# --------------------------------------------------------------------- SCRAM

def server_keys(row_hash):
    """The SCRAM credentials a server derives from a Django pbkdf2 row, or
    reads from a scram_sha256 row (django-tether's hasher: the verifier itself)."""
    if row_hash.startswith("scram_sha256$"):
        _, iterations, salt, keys = row_hash.split("$", 3)  # base85 may hold "$"
        keys = base64.b85decode(keys)
        return "SCRAM-SHA-256", (salt.encode("ascii"), keys[:32], keys[32:], int(iterations))
    algorithm, iterations, salt, b64 = row_hash.split("$", 3)
    mechanism, hf = HASHES[algorithm]
    salted_password = base64.b64decode(b64)
    client_key = hmac.new(salted_password, b"Client Key", hf).digest()
    stored_key = hf(client_key).digest()
    server_key = hmac.new(salted_password, b"Server Key", hf).digest()
    return mechanism, (salt.encode("ascii"), stored_key, server_key, int(iterations))


@contextmanager
def raw_utf8_client():
    """scramp without SASLprep: the password's UTF-8 bytes as they are."""
    saved = scramp.core.saslprep
    scramp.core.saslprep = lambda s: s
    try:
        yield
    finally:
        scramp.core.saslprep = saved


def exchange(mechanism, auth_info, username, password):
    """One full SCRAM exchange; True if both sides accept, False if refused."""
    seen = []

    def auth_fn(name):  # scramp hands over the unescaped username
        seen.append(name)
        return auth_info if name == username else None

    server = scramp.ScramMechanism(mechanism).make_server(auth_fn)
    client = scramp.ScramClient([mechanism], username, password)
    client_first = client.get_client_first()
    escaped = username.replace("=", "=3D").replace(",", "=2C")
    assert client_first.startswith("n,,n=%s,r=" % escaped), client_first
    server.set_client_first(client_first)
    assert seen == [username], (seen, username)
    client.set_server_first(server.get_server_first())
    try:
        server.set_client_final(client.get_client_final())
    except scramp.ScramException:
        return False
    client.set_server_final(server.get_server_final())  # raises on a bad ServerSignature
    return True


def check_user(task):
    db_file, username, row_hash, password = task
    mechanism, auth_info = server_keys(row_hash)
    results = []
    ok = exchange(mechanism, auth_info, username, password)
    if saslprep(password) == password:
        results.append(("right password", ok, True))
    else:
        results.append(("right password, SASLprep client", ok, False))
        with raw_utf8_client():
            results.append(("right password, raw UTF-8 client",
                             exchange(mechanism, auth_info, username, password), True))
    results.append(("wrong password", exchange(mechanism, auth_info, username,
                                               "wrong-" + password), False))
    return db_file, username, mechanism, auth_info[3], results


# ---------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", required=True,
                    help="users.json, or one database's part written by build_fixture")
    ap.add_argument("--dir", help="directory of the .sqlite3 files (default: the manifest's)")
    ap.add_argument("--url", help="check a server database instead of SQLite files")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    with open(args.manifest, encoding="utf-8") as f:
        manifest = json.load(f)
    if "databases" in manifest:
        dbs = manifest["databases"]
    else:  # one database's part, e.g. from migrate-url
        dbs = {manifest.get("file") or manifest.get("database_name") or "?": manifest}
    directory = args.dir or os.path.dirname(os.path.abspath(args.manifest))

    failures, tasks, refused = [], [], 0
    for key, db in dbs.items():
        rows = read_rows(db, directory, args.url)
        by_name = {u["username"]: u for u in db["users"]}
        if [r[0] for r in rows] != [u["username"] for u in db["users"]]:
            failures.append("%s: rows %r != manifest %r" % (key, [r[0] for r in rows],
                                                            list(by_name)))
            continue
        for username, row_hash, is_active in rows:
            u = by_name[username]
            if row_hash != u["password_hash"] or is_active != u["is_active"]:
                failures.append("%s/%s: row differs from manifest" % (key, username))
            algorithm = row_hash.split("$", 1)[0] if "$" in row_hash else None
            if algorithm != u["algorithm"]:
                failures.append("%s/%s: algorithm %r != %r" % (key, username, algorithm,
                                                                 u["algorithm"]))
            if algorithm in HASHES:
                if int(row_hash.split("$")[1]) != u["iterations"]:
                    failures.append("%s/%s: iterations differ" % (key, username))
                tasks.append((key, username, row_hash, u["password"]))
            else:
                refused += 1  # argon2, bcrypt, scrypt, md5, unusable: no SCRAM possible

    lines = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for db_file, username, mechanism, iterations, results in pool.map(check_user, tasks):
            verdicts = []
            for what, got, want in results:
                verdicts.append("%s %s" % (what, "accepted" if got else "refused"))
                if got != want:
                    failures.append("%s/%s: %s was %s" % (db_file, username, what,
                                                          "accepted" if got else "refused"))
            lines.append("  %-22s %-22s %-13s i=%-8d %s" % (db_file, username, mechanism,
                                                             iterations, "; ".join(verdicts)))
    print("selfcheck: scramp client <-> scramp server on keys derived from Django rows")
    print("\n".join(lines))
    print("selfcheck: %d pbkdf2/scram_sha256 rows x full SCRAM exchanges (right/wrong password), "
          "%d non-SCRAM rows skipped, %d databases: %s"
          % (len(tasks), refused, len(dbs), "FAILED" if failures else "OK"))
    for f in failures:
        print("  FAIL " + f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
