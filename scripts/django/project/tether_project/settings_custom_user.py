"""Same project, but with a custom user model keyed by email."""
from .settings import *  # noqa: F401,F403
from .settings import INSTALLED_APPS

INSTALLED_APPS = INSTALLED_APPS + ["accounts"]
AUTH_USER_MODEL = "accounts.EmailUser"
