#!/usr/bin/env python3
"""Prints scram_sha256 rows made by django_tether.hashers.ScramSHA256PasswordHasher.

core/tests/vectors.rs (`scram_sha256_rows_from_the_python_hasher`) and
django-tether/tests/test_hashers.py pin these exact rows; rerun after a
change to the row format and update both:

    PYTHONPATH=django-tether/src .venv-django-5.2/bin/python scripts/django/scram-vectors.py
"""
import django
from django.conf import settings

settings.configure(PASSWORD_HASHERS=["django_tether.hashers.ScramSHA256PasswordHasher"])
django.setup()

from django.contrib.auth.hashers import check_password, get_hasher  # noqa: E402

VECTORS = [
    # (password, salt, iterations); the first is core's DJANGO_52_HASH (pbkdf2_sha256 by Django 5.2).
    ("correct horse", "56ryAKpSnLAXlMYo5d2L5x", 1_000_000),
    ("pencil", "W22ZaJ0SNY7soEsUEjb6gQ", 4096),
    ("p\u00e4ssw\u00f6rd", "zoeSaltZoeSalt12345678", 4096),
]

for password, salt, iterations in VECTORS:
    row = get_hasher("scram_sha256").encode(password, salt, iterations)
    assert check_password(password, row) and not check_password(password + "x", row)
    print("%r %s" % (password, row))
