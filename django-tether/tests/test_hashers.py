import base64
import hashlib
import hmac
import os
import re

import pytest
from django.contrib.auth.hashers import (
    check_password,
    get_hasher,
    identify_hasher,
    is_password_usable,
    make_password,
)

from django_tether.hashers import (
    ScramSHA256PasswordHasher,
    ScramVerifier,
    scram_sha256_from_pbkdf2_sha256,
    verifier_of,
)

# Rows pinned by core/tests/vectors.rs too (scripts/django/scram-vectors.py).
VECTORS = [
    (
        "correct horse",
        "scram_sha256$1000000$56ryAKpSnLAXlMYo5d2L5x$"
        "Lq6=S7<HfbN5QG-&F^t1b1K2Hq<*-Wf;;bhS|%Yhv&2~9clxPU%rjL)R1BfhWQ-*wttZ(8TW^<VkqufJ",
    ),
    (
        "pencil",
        "scram_sha256$4096$W22ZaJ0SNY7soEsUEjb6gQ$"
        "vt_+SOVtCQ)lJttKV7ep`)pbrr;5~OJ)YsSqovb@x)itPB5j|lm)9~1>Z-A&$0-jotk%0(fzCZ8V}p;h",
    ),
    (
        "p\u00e4ssw\u00f6rd",
        "scram_sha256$4096$zoeSaltZoeSalt12345678$"
        "n+KXZxLC3hoQ-j4p%B)IC7h+_>5~5t0E!<C=ugtp(Ug_c)B8`+A9-Req9cSerM2Zx7L-%gr?|@y#O5aI",
    ),
]
# Django 5.2's pbkdf2_sha256 row for the first vector (core's DJANGO_52_HASH).
DJANGO_52_HASH = "pbkdf2_sha256$1000000$56ryAKpSnLAXlMYo5d2L5x$hPjabwIwfFzX6LEaxIt5cCa4001RIC/45BitWAzM4dA="


def independent_row(password, salt, iterations):
    """The row per docs/DJANGO.md section 4, with hashlib only."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations, 32)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored = hashlib.sha256(client_key).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    return "scram_sha256$%d$%s$%s" % (iterations, salt, base64.b85encode(stored + server).decode())


@pytest.mark.parametrize("password,row", VECTORS[1:])
def test_rows_match_the_contract_and_the_pinned_vectors(password, row):
    _, iterations, salt, _ = row.split("$", 3)
    hasher = ScramSHA256PasswordHasher()
    assert hasher.encode(password, salt, int(iterations)) == row
    assert independent_row(password, salt, int(iterations)) == row


def test_the_slow_vector_is_the_django_52_row_converted():
    password, row = VECTORS[0]
    assert scram_sha256_from_pbkdf2_sha256(DJANGO_52_HASH) == row
    assert check_password(password, row)


def test_django_verifies_its_rows(settings):
    encoded = make_password("s3cret!")
    assert encoded.startswith("scram_sha256$1000$")
    assert re.fullmatch(r"scram_sha256\$1000\$[A-Za-z0-9]{22}\$[0-9A-Za-z!#$%&()*+\-;<=>?@^_`{|}~]{80}", encoded)
    assert identify_hasher(encoded).algorithm == "scram_sha256"
    assert is_password_usable(encoded)
    assert check_password("s3cret!", encoded)
    assert not check_password("s3cret", encoded)
    assert not check_password("", encoded)


def test_new_rows_use_djangos_pbkdf2_count_by_default():
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    assert ScramSHA256PasswordHasher().target_iterations() == PBKDF2PasswordHasher.iterations


def test_a_row_keeps_its_iteration_count():
    hasher = ScramSHA256PasswordHasher()
    old = hasher.encode("pw", "saltsaltsaltsalt", 260000)
    assert not hasher.must_update(old)
    setter_calls = []
    assert check_password("pw", old, setter=setter_calls.append, preferred=hasher)
    assert setter_calls == []


def test_a_project_count_rehashes_other_counts():
    class Project(ScramSHA256PasswordHasher):
        iterations = 5000

    hasher = Project()
    old = hasher.encode("pw", "saltsaltsaltsalt", 4096)
    assert hasher.must_update(old)
    assert not hasher.must_update(hasher.encode("pw", "saltsaltsaltsalt"))
    assert hasher.encode("pw", "saltsaltsaltsalt").startswith("scram_sha256$5000$")


def test_pbkdf2_rows_are_upgraded_on_login(django_user_model):
    user = django_user_model.objects.create(username="old")
    user.password = get_hasher("pbkdf2_sha256").encode("pw", "saltsaltsaltsalt", 1000)
    user.save()
    assert user.check_password("pw")
    user.refresh_from_db()
    assert user.password.startswith("scram_sha256$")
    assert user.check_password("pw")


def test_rows_fit_djangos_password_column(django_user_model):
    assert len(VECTORS[0][1]) == 124
    field = django_user_model._meta.get_field("password")
    assert field.max_length == 128
    longest = "scram_sha256$%d$%s$%s" % (2**32 - 1, "x" * 22, KEYS)
    assert len(longest) == 127
    assert ScramVerifier.parse(longest).iterations == 2**32 - 1


def test_conversion_keeps_salt_iterations_and_verifier():
    row = get_hasher("pbkdf2_sha256").encode("pw", "saltsaltsaltsalt", 1000)
    converted = scram_sha256_from_pbkdf2_sha256(row)
    assert converted.startswith("scram_sha256$1000$saltsaltsaltsalt$")
    assert verifier_of(row) == verifier_of(converted)
    assert check_password("pw", converted)
    assert not check_password("pw2", converted)
    for bad in ("pbkdf2_sha1$1000$salt$AAAA", "argon2$x", "pbkdf2_sha256$1000$salt$not-base64!", "", None):
        with pytest.raises(ValueError):
            scram_sha256_from_pbkdf2_sha256(bad)


KEYS = VECTORS[1][1].split("$", 3)[3]


@pytest.mark.parametrize(
    "row",
    [
        "scram_sha256$1000$salt$AAAA",
        "scram_sha256$1000$salt",
        "scram_sha256$0$salt$" + KEYS,
        "scram_sha256$01$salt$" + KEYS,
        "scram_sha256$4294967296$salt$" + KEYS,
        "scram_sha256$1000$$" + KEYS,
        "scram_sha256$1000$salt$" + KEYS[:75],
        "scram_sha256$1000$salt$" + KEYS + "$",
        "scram_sha256$1000$salt$\"" + KEYS[1:],
        "scram_sha256$1000$salt$~~~~~" + KEYS[5:],
    ],
)
def test_malformed_rows_never_verify_and_never_crash_a_login(row):
    hasher = ScramSHA256PasswordHasher()
    with pytest.raises(ValueError):
        hasher.decode(row)
    assert not hasher.verify("pw", row)
    assert not hasher.must_update(row)
    hasher.harden_runtime("pw", row)
    assert not check_password("pw", row)


def test_safe_summary_masks_everything_secret():
    hasher = ScramSHA256PasswordHasher()
    row = VECTORS[1][1]
    summary = {str(k): v for k, v in hasher.safe_summary(row).items()}
    assert summary["algorithm"] == "scram_sha256"
    assert summary["iterations"] == 4096
    for key in ("salt", "stored key", "server key"):
        assert "*" in summary[key]
    assert "vt_+SOVtCQ" not in str(summary)
    assert "s2W9RUvVA6DVTdc8" not in str(summary)  # StoredKey's base64


def test_harden_runtime_runs_the_missing_iterations(monkeypatch):
    calls = []
    monkeypatch.setattr("django_tether.hashers.pbkdf2", lambda *a, **k: calls.append(a[2]))

    class Project(ScramSHA256PasswordHasher):
        iterations = 5000

    Project().harden_runtime("pw", VECTORS[1][1])
    assert calls == [5000 - 4096]


# --- nothing in a scram_sha256 row logs a device in ---------------------------


def scram_server_accepts(stored_key, client_key_guess):
    """A SCRAM server's check (RFC 5802): H(ClientProof XOR ClientSignature) == StoredKey."""
    auth_message = os.urandom(48)
    client_signature = hmac.new(stored_key, auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key_guess, client_signature))
    recovered = bytes(a ^ b for a, b in zip(proof, client_signature))
    return hmac.compare_digest(hashlib.sha256(recovered).digest(), stored_key)


def candidate_keys(row):
    """Every 32-byte value an attacker can read or cheaply derive from a row."""
    parts = row.split("$", 3)
    if parts[0] == "scram_sha256":
        keys = base64.b85decode(parts[3])
        raw = [keys[:32], keys[32:]]
    else:
        raw = [base64.b64decode(parts[3])]
    derived = []
    for value in raw:
        derived += [
            value,
            hashlib.sha256(value).digest(),
            hmac.new(value, b"Client Key", "sha256").digest(),
            hmac.new(value, b"Server Key", "sha256").digest(),
        ]
    derived.append(hashlib.sha256(parts[2].encode()).digest())
    return derived


def test_nothing_in_a_scram_row_logs_a_client_in():
    pbkdf2_row = get_hasher("pbkdf2_sha256").encode("pw", "saltsaltsaltsalt", 1000)
    scram_row = scram_sha256_from_pbkdf2_sha256(pbkdf2_row)
    stored_key = ScramVerifier.parse(scram_row).stored_key
    # The pbkdf2 row is password-equivalent: its SaltedPassword gives ClientKey.
    assert any(scram_server_accepts(stored_key, k) for k in candidate_keys(pbkdf2_row))
    # The scram row is not: no value in it (or one HMAC/hash away) is ClientKey.
    assert not any(scram_server_accepts(stored_key, k) for k in candidate_keys(scram_row))
    # And the password itself still is what it takes.
    salted = hashlib.pbkdf2_hmac("sha256", b"pw", b"saltsaltsaltsalt", 1000)
    assert scram_server_accepts(stored_key, hmac.new(salted, b"Client Key", "sha256").digest())
