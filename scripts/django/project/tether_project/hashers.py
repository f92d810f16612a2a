from django.contrib.auth.hashers import PBKDF2PasswordHasher


class PBKDF2Iter260000PasswordHasher(PBKDF2PasswordHasher):
    """Django's own pbkdf2_sha256 hasher, at Django 3.2's default iteration count.

    It keeps the algorithm name ``pbkdf2_sha256``, so its rows look exactly like
    rows written by an older Django that nobody has logged in with since (Django
    re-hashes them at the current count on the next successful
    ``user.check_password``).
    """

    iterations = 260000
