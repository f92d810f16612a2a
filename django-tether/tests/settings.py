"""Settings of django-tether's own test project (pytest-django)."""

import os
from urllib.parse import urlsplit

SECRET_KEY = "django-tether-tests-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_tether",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
# scripts/django/test-package also runs the suite on PostgreSQL (its
# transactions and column limits are not SQLite's): postgres://user@host:port/name
if os.environ.get("DJANGO_TETHER_TEST_POSTGRES"):
    _url = urlsplit(os.environ["DJANGO_TETHER_TEST_POSTGRES"])
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": _url.username or "",
        "PASSWORD": _url.password or "",
        "HOST": _url.hostname or "127.0.0.1",
        "PORT": str(_url.port or 5432),
    }

# The real hasher first, at a test-friendly count for new rows (tests.hashers).
PASSWORD_HASHERS = [
    "tests.hashers.FastScramSHA256PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
]

TETHER = {
    "FORWARD_SECRET": "test-forward-secret-0123456789",
    "ADMIN_URL": None,  # tests that talk to the admin API start tests.fake_admin
    "ADMIN_TOKEN": "test-admin-token-0123456789",
}

STATIC_URL = "/static/"
