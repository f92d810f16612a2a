"""A test-only Django project that tether serve --forward talks to.

Environment: FORWARD_DB (the SQLite file; tether serve reads its auth_user),
FORWARD_WAL (1, the default: WAL journal; 0: rollback journal),
TETHER_FORWARD_SECRET (the secret requests are signed with).
"""
import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_KEY = "django-forward-test-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "devices",
]
MIDDLEWARE = []
ROOT_URLCONF = "forwardsite.urls"
WSGI_APPLICATION = "forwardsite.wsgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("FORWARD_DB", os.path.join(BASE_DIR, "db.sqlite3")),
        # Two gunicorn workers wait for each other's writes.
        "OPTIONS": {"timeout": 20},
    }
}
if os.environ.get("FORWARD_WAL", "1") == "1":
    # Readers (tether serve) go on while Django writes.
    DATABASES["default"]["OPTIONS"]["init_command"] = "PRAGMA journal_mode=WAL"
else:
    # A rollback journal (the file may be replaced by `mv`).
    DATABASES["default"]["OPTIONS"]["init_command"] = "PRAGMA journal_mode=DELETE"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
TETHER_FORWARD_SECRET = os.environ.get("TETHER_FORWARD_SECRET", "")
LOGGING = {
    "version": 1,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["stderr"], "level": "WARNING"}},
}
