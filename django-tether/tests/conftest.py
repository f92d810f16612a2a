import pytest

from django_tether.testing import TetherClient
from tests.fake_admin import FakeAdmin


@pytest.fixture
def tether_client():
    return TetherClient()


@pytest.fixture
def fake_admin(settings):
    """A fake admin API, with TETHER["ADMIN_URL"] pointing at it."""
    admin = FakeAdmin()
    settings.TETHER = {**settings.TETHER, "ADMIN_URL": admin.url}
    yield admin
    admin.close()


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password")
