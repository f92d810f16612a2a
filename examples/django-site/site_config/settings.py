"""Settings of the sample site: a Django project whose devices are thermostats.

Everything secret or deployment-specific comes from the environment:

    TETHER_FORWARD_SECRET   the secret `tether serve --forward-secret` has (16+ characters)
    TETHER_ADMIN_URL        where `tether serve --admin` listens (default http://127.0.0.1:7421)
    TETHER_ADMIN_TOKEN      the server's TETHER_ADMIN_TOKEN, if it has one
    SITE_DB                 the SQLite file (default db.sqlite3 here); tether serve reads the same file
    DJANGO_SECRET_KEY       (a development key otherwise)
"""

import os
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-not-a-secret-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_tether",
    "thermostats",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "site_config.urls"
WSGI_APPLICATION = "site_config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SITE_DB", str(BASE_DIR / "db.sqlite3")),
        # Device logins read this file while Django writes it: WAL lets them
        # (Django >= 5.1 applies it on connect; older ones: run
        # `sqlite3 db.sqlite3 'PRAGMA journal_mode=WAL'` once).
        "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL"} if django.VERSION >= (5, 1) else {},
    }
}

# scram_sha256 first: rows store SCRAM verifiers, and a copy of the table
# logs no device in. The others still check (and upgrade) older rows.
PASSWORD_HASHERS = [
    "django_tether.hashers.ScramSHA256PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
]

TETHER = {
    "FORWARD_SECRET": os.environ.get("TETHER_FORWARD_SECRET"),
    "ADMIN_URL": os.environ.get("TETHER_ADMIN_URL", "http://127.0.0.1:7421"),
    "ADMIN_TOKEN": os.environ.get("TETHER_ADMIN_TOKEN"),
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_tether": {"handlers": ["console"], "level": "INFO"},
        "thermostats": {"handlers": ["console"], "level": "INFO"},
    },
}
