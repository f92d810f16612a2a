"""The users written into each Tether test database.

Passwords are fixed and published: these rows exist only for tests.
``hasher`` is a Django algorithm name looked up in PASSWORD_HASHERS, or
"pbkdf2_sha256@260000" for Django's PBKDF2 hasher at an older iteration count.
``password=None`` means ``set_unusable_password()``.
"""

# Group and permission every profile creates.
GROUP = "devices"
PERMISSION = "devices.connect"

# One shared definition so the same username always has the same password.
_ALL = {
    u["username"]: u
    for u in [
        dict(
            username="alice",
            password="alice-password",
            hasher="pbkdf2_sha256",
            groups=[GROUP],
            note="default hasher at this Django's default iterations; connect via group",
        ),
        dict(
            username="bob",
            password="bob-password",
            hasher="pbkdf2_sha1",
            user_permissions=[PERMISSION],
            note="pbkdf2_sha1 (SCRAM-SHA-1); connect as a direct user permission",
        ),
        dict(
            username="carol",
            password="carol-password",
            hasher="argon2",
            groups=[GROUP],
            note="argon2: cannot do SCRAM, must be refused as unsupported hash",
        ),
        dict(
            username="dave",
            password="dave-password",
            hasher="bcrypt_sha256",
            groups=[GROUP],
            note="bcrypt_sha256: cannot do SCRAM",
        ),
        dict(
            username="erin",
            password="erin-password",
            hasher="scrypt",
            groups=[GROUP],
            note="scrypt: cannot do SCRAM",
        ),
        dict(
            username="mallory",
            password="mallory-password",
            hasher="md5",
            groups=[GROUP],
            note="salted md5: cannot do SCRAM",
        ),
        dict(
            username="sam",
            password="sam-password",
            hasher="scram_sha256",
            groups=[GROUP],
            note="scram_sha256 (django-tether's hasher): StoredKey/ServerKey only, "
            "not password-equivalent; this Django's default iterations",
        ),
        dict(
            username="eve",
            password="eve-password",
            hasher="pbkdf2_sha256",
            is_active=False,
            groups=[GROUP],
            note="inactive (is_active=False) although in the devices group",
        ),
        dict(
            username="frank",
            password=None,
            hasher=None,
            groups=[GROUP],
            note="unusable password (set_unusable_password, hash starts with '!')",
        ),
        dict(
            username="root",
            password="root-password",
            hasher="pbkdf2_sha256",
            superuser=True,
            note="active superuser, no groups: has every permission",
        ),
        dict(
            username="henry",
            password="henry-password",
            hasher="pbkdf2_sha256@260000",
            groups=[GROUP],
            note="pbkdf2_sha256 at an old count (260000), not yet re-hashed",
        ),
        dict(
            username="nogroup",
            password="nogroup-password",
            hasher="pbkdf2_sha256",
            note="active, no groups, no permissions: password right but not allowed",
        ),
        dict(
            username="o,dd=name",
            password="odd-password",
            hasher="pbkdf2_sha256",
            groups=[GROUP],
            note="',' and '=' must be escaped in SCRAM (n=o=2Cdd=3Dname); "
            "created through the ORM, which does not run the username validator",
        ),
        dict(
            username="zo\u00eb",
            password="p\u00e4ssw\u00f6rd",
            hasher="pbkdf2_sha256",
            groups=[GROUP],
            note="non-ASCII username and password (NFC), hashed as raw UTF-8",
        ),
        dict(
            username="saslprep",
            # U+00A0 NO-BREAK SPACE and U+FB01 LATIN SMALL LIGATURE FI: SASLprep
            # maps them to ' ' and 'fi', Django does not. A client that applies
            # SASLprep (as RFC 5802 says, and as scramp does) fails on this row.
            password="no\u00a0break \ufb01sh",
            hasher="pbkdf2_sha256",
            groups=[GROUP],
            note="password changes under SASLprep: proves clients must send raw "
            "UTF-8 (a SASLprep client is refused)",
        ),
    ]
}

PROFILES = {
    # default.sqlite3 and migrate-url databases (default user model)
    "full": [_ALL[name] for name in _ALL],
    # django-4.2.sqlite3 / django-latest.sqlite3
    "minimal": [_ALL["alice"], _ALL["bob"], _ALL["sam"]],
    # custom_user.sqlite3 (accounts.EmailUser, USERNAME_FIELD = email)
    "custom": [
        dict(
            username="alice@example.com",
            password="alice-password",
            hasher="pbkdf2_sha256",
            groups=[GROUP],
            note="custom user model; connect via group",
        ),
        dict(
            username="inactive@example.com",
            password="inactive-password",
            hasher="pbkdf2_sha256",
            is_active=False,
            groups=[GROUP],
            note="custom user model; inactive although in the devices group",
        ),
    ],
}
