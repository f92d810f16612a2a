"""A Django password hasher whose rows are SCRAM verifiers, not password equivalents.

A ``pbkdf2_sha256`` row stores SCRAM-SHA-256's SaltedPassword. Anyone with a copy
of ``auth_user`` can compute ClientKey from it and log a device in to Tether.
``scram_sha256`` rows store only what a SCRAM server needs (RFC 5802, the same
fields as RFC 5803):

    scram_sha256$<iterations>$<salt>$<base85(StoredKey || ServerKey)>

    SaltedPassword = PBKDF2-HMAC-SHA256(password, salt, iterations, 32)
    StoredKey      = SHA-256(HMAC(SaltedPassword, "Client Key"))
    ServerKey      = HMAC(SaltedPassword, "Server Key")

base85 is RFC 1924's (``base64.b85encode``, 80 characters): with base64 the
row would not fit Django's ``varchar(128)`` password column. Its alphabet
holds ``$``, so the row is split at its first three ``$`` only.

A login needs ClientKey, and the row holds only its hash. Django verifies a
password against the row; tether-server reads it as SCRAM credentials with no
PBKDF2 at login (docs/DJANGO.md section 4).

Iterations: a row keeps its count (``must_update`` is False) unless the project
sets its own with a subclass (``iterations = 1_500_000``). Re-hashing picks a
new salt, and a new salt invalidates the keys a device cached, so an upgrade of
Django (which raises PBKDF2's default) does not re-hash these rows. New rows use
the count of Django's ``PBKDF2PasswordHasher``.
"""

import base64
import binascii
import hashlib
import hmac

from django.contrib.auth.hashers import (
    BasePasswordHasher,
    PBKDF2PasswordHasher,
    mask_hash,
)
from django.utils.crypto import constant_time_compare, pbkdf2
from django.utils.translation import gettext_noop as _

__all__ = [
    "ScramSHA256PasswordHasher",
    "ScramVerifier",
    "scram_sha256_from_pbkdf2_sha256",
]

ALGORITHM = "scram_sha256"
KEY_LEN = 32
# 64 bytes of keys in base85.
KEYS_B85_LEN = 80
# Django's password column (AbstractBaseUser.password).
DJANGO_PASSWORD_MAX_LENGTH = 128


class ScramVerifier:
    """The parts of a ``scram_sha256`` row (and of a SCRAM-SHA-256 verifier)."""

    __slots__ = ("iterations", "salt", "stored_key", "server_key")

    def __init__(self, iterations, salt, stored_key, server_key):
        self.iterations = iterations
        self.salt = salt
        self.stored_key = stored_key
        self.server_key = server_key

    @classmethod
    def from_salted_password(cls, salted_password, salt, iterations):
        """The verifier for a known SaltedPassword (what a pbkdf2_sha256 row stores)."""
        client_key = hmac.new(salted_password, b"Client Key", hashlib.sha256).digest()
        return cls(
            iterations,
            salt,
            hashlib.sha256(client_key).digest(),
            hmac.new(salted_password, b"Server Key", hashlib.sha256).digest(),
        )

    @classmethod
    def from_password(cls, password, salt, iterations):
        """Runs PBKDF2 (slow by design) and derives the verifier."""
        salted = pbkdf2(password, salt, iterations, dklen=KEY_LEN, digest=hashlib.sha256)
        return cls.from_salted_password(salted, salt, iterations)

    @classmethod
    def parse(cls, encoded):
        """Splits a ``scram_sha256`` row; raises ValueError naming the bad part."""
        parts = encoded.split("$", 3)  # the keys' base85 may hold "$"
        if len(parts) != 4 or parts[0] != ALGORITHM:
            raise ValueError("not a scram_sha256 hash (expected 4 fields)")
        _, iterations, salt, keys = parts
        if (
            not iterations.isascii()
            or not iterations.isdigit()
            or iterations.startswith("0")
            or int(iterations) > 0xFFFFFFFF
        ):
            raise ValueError("scram_sha256 hash: iterations must be a decimal in 1..=2^32-1")
        if not salt:
            raise ValueError("scram_sha256 hash: empty salt")
        if len(keys) != KEYS_B85_LEN:
            raise ValueError("scram_sha256 hash: the keys are not %d base85 characters" % KEYS_B85_LEN)
        try:
            raw = base64.b85decode(keys.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise ValueError("scram_sha256 hash: the keys are not base85") from None
        return cls(int(iterations), salt, raw[:KEY_LEN], raw[KEY_LEN:])

    def encode(self):
        """The row: ``scram_sha256$<i>$<salt>$<base85(StoredKey || ServerKey)>``."""
        keys = base64.b85encode(self.stored_key + self.server_key).decode("ascii")
        return "%s$%d$%s$%s" % (ALGORITHM, self.iterations, self.salt, keys)

    def __eq__(self, other):
        if not isinstance(other, ScramVerifier):
            return NotImplemented
        return (
            self.iterations == other.iterations
            and self.salt == other.salt
            and hmac.compare_digest(self.stored_key, other.stored_key)
            and hmac.compare_digest(self.server_key, other.server_key)
        )

    def __hash__(self):
        return hash((self.iterations, self.salt, self.stored_key, self.server_key))

    def __repr__(self):
        return "ScramVerifier(iterations=%d, salt=<%d chars>)" % (self.iterations, len(self.salt))


def verifier_of(encoded):
    """The SCRAM-SHA-256 verifier a row gives tether-server, or None.

    ``pbkdf2_sha256`` and ``scram_sha256`` rows have one; two rows with the
    same verifier log the same devices in with the same cached keys.
    """
    if not isinstance(encoded, str):
        return None
    try:
        if encoded.startswith(ALGORITHM + "$"):
            return ScramVerifier.parse(encoded)
        if encoded.startswith("pbkdf2_sha256$"):
            algorithm, iterations, salt, b64 = encoded.split("$")
            salted = base64.b64decode(b64.encode("ascii"), validate=True)
            if len(salted) != KEY_LEN or not iterations.isdigit() or int(iterations) == 0:
                return None
            if not salt:
                return None
            return ScramVerifier.from_salted_password(salted, salt, int(iterations))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return None
    return None


def scram_sha256_from_pbkdf2_sha256(encoded):
    """Converts a ``pbkdf2_sha256`` row to ``scram_sha256`` without the password.

    The row already holds SaltedPassword, so salt and iterations are kept and
    the verifier is the one tether-server derived from the old row: keys a
    device cached keep working. Raises ValueError for any other row.
    """
    if not isinstance(encoded, str) or not encoded.startswith("pbkdf2_sha256$"):
        raise ValueError("not a pbkdf2_sha256 hash")
    verifier = verifier_of(encoded)
    if verifier is None:
        raise ValueError("malformed pbkdf2_sha256 hash")
    return verifier.encode()


class ScramSHA256PasswordHasher(BasePasswordHasher):
    """Stores SCRAM-SHA-256 verifiers (StoredKey, ServerKey), never SaltedPassword.

    Put it first in ``PASSWORD_HASHERS``. ``iterations = None`` (the default)
    keeps every row's count and uses Django's PBKDF2 default for new rows; a
    subclass that sets ``iterations`` re-hashes rows with another count at the
    user's next login on the site (which changes the salt: devices must log in
    with their password again).
    """

    algorithm = ALGORITHM
    iterations = None

    def target_iterations(self):
        """The count for new rows."""
        return self.iterations or PBKDF2PasswordHasher.iterations

    def encode(self, password, salt, iterations=None):
        self._check_encode_args(password, salt)
        iterations = iterations or self.target_iterations()
        return ScramVerifier.from_password(password, salt, iterations).encode()

    def decode(self, encoded):
        verifier = ScramVerifier.parse(encoded)
        return {
            "algorithm": self.algorithm,
            "iterations": verifier.iterations,
            "salt": verifier.salt,
            "hash": base64.b64encode(verifier.stored_key).decode("ascii"),
            "stored_key": base64.b64encode(verifier.stored_key).decode("ascii"),
            "server_key": base64.b64encode(verifier.server_key).decode("ascii"),
        }

    def verify(self, password, encoded):
        try:
            verifier = ScramVerifier.parse(encoded)
        except ValueError:
            return False
        candidate = ScramVerifier.from_password(password, verifier.salt, verifier.iterations)
        return constant_time_compare(candidate.encode(), encoded)

    def safe_summary(self, encoded):
        decoded = self.decode(encoded)
        return {
            _("algorithm"): decoded["algorithm"],
            _("iterations"): decoded["iterations"],
            _("salt"): mask_hash(decoded["salt"]),
            _("stored key"): mask_hash(decoded["stored_key"]),
            _("server key"): mask_hash(decoded["server_key"]),
        }

    def must_update(self, encoded):
        # Re-hashing changes the salt and with it every key a device cached:
        # only when the project asks for its own count.
        if self.iterations is None:
            return False
        try:
            return ScramVerifier.parse(encoded).iterations != self.iterations
        except ValueError:
            return False

    def harden_runtime(self, password, encoded):
        # Like PBKDF2PasswordHasher: a wrong password against a row with fewer
        # iterations costs as much as one against a current row.
        try:
            verifier = ScramVerifier.parse(encoded)
        except ValueError:
            return
        extra = self.target_iterations() - verifier.iterations
        if extra > 0:
            pbkdf2(password, verifier.salt, extra, dklen=KEY_LEN, digest=hashlib.sha256)
