"""Settings of the Django project that writes Tether's test databases.

The database comes from the environment variable TETHER_DATABASE_URL:
  sqlite:////absolute/path.sqlite3   (or sqlite:///relative/path.sqlite3)
  postgres://user[:password]@host[:port]/name
  mysql://user[:password]@host[:port]/name     (PyMySQL, for MariaDB/MySQL)
Nothing here is secret: it is a fixture generator, never a deployment.
"""
import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

# django-tether's hasher (PASSWORD_HASHERS below) from this repository's
# source, so that every script driving this project can write scram_sha256 rows.
sys.path.insert(0, str(BASE_DIR.parent.parent.parent / "django-tether" / "src"))

SECRET_KEY = "tether-fixture-generator-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = []

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "devices",
    "fixturegen",
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

# Django's default list (pbkdf2_sha256 first, so it is the default hasher),
# plus MD5 so that an md5 row can be written by Django itself, and
# django-tether's scram_sha256.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
    "django.contrib.auth.hashers.MD5PasswordHasher",
    "django_tether.hashers.ScramSHA256PasswordHasher",
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def database_from_url(url):
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        # sqlite:////abs/path -> /abs/path ; sqlite:///rel/path -> rel/path
        path = unquote(parts.path)[1:]
        if not path:
            raise ValueError("sqlite URL needs a path: %r" % url)
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": path}
    if scheme in ("postgres", "postgresql", "pgsql"):
        engine = "django.db.backends.postgresql"
        default_port = 5432
        options = {}
    elif scheme in ("mysql", "mariadb"):
        # PyMySQL stands in for mysqlclient (no C compiler or libmysqlclient needed).
        import pymysql

        pymysql.install_as_MySQLdb()
        engine = "django.db.backends.mysql"
        default_port = 3306
        options = {"charset": "utf8mb4"}
    else:
        raise ValueError("unsupported database URL scheme %r" % scheme)
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise ValueError("database URL needs a database name: %r" % url)
    return {
        "ENGINE": engine,
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or default_port),
        "OPTIONS": options,
    }


DATABASES = {
    "default": database_from_url(
        # Without TETHER_DATABASE_URL (e.g. `manage.py makemigrations`), nothing is written.
        os.environ.get("TETHER_DATABASE_URL", "sqlite:///:memory:")
    )
}
