"""The admin's live device sessions page."""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from tests.fake_admin import session_json

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:django_tether_livesession_changelist"


@pytest.fixture
def staff(django_user_model):
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_livesession"))
    return user


def test_the_page_lists_live_sessions(client, admin_user, fake_admin, alice):
    fake_admin.sessions = [session_json(3, "alice", alice.pk), session_json(5, "ghost", 999, peer="[2001:db8::1]:7")]
    client.force_login(admin_user)
    response = client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Live device sessions" in html
    assert "192.0.2.10:50112" in html and "[2001:db8::1]:7" in html
    assert reverse("admin:auth_user_change", args=[alice.pk]) in html
    assert "ghost (deleted)" in html
    assert html.count('value="Disconnect"') == 2
    assert "2 live sessions" in html


def test_the_app_is_on_the_admin_index(client, admin_user, fake_admin):
    client.force_login(admin_user)
    html = client.get(reverse("admin:index")).content.decode()
    assert reverse(CHANGELIST) in html
    assert "Live device sessions" in html


def test_search_by_username(client, admin_user, fake_admin, alice):
    fake_admin.sessions = [session_json(3, "alice", alice.pk), session_json(5, "bob", 2)]
    client.force_login(admin_user)
    html = client.get(reverse(CHANGELIST), {"q": "bob"}).content.decode()
    assert fake_admin.requests[-1].query == {"username": ["bob"]}
    assert "1 live session" in html


def test_a_server_that_cannot_be_asked_is_shown(client, admin_user, settings):
    settings.TETHER = {**settings.TETHER, "ADMIN_URL": "http://127.0.0.1:9"}
    client.force_login(admin_user)
    response = client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    assert "The Tether server cannot be asked" in response.content.decode()


def test_disconnect(client, admin_user, fake_admin, alice):
    fake_admin.routes[("DELETE", "/sessions/alice")] = (200, {"kicked": [3]})
    client.force_login(admin_user)
    url = reverse("admin:django_tether_livesession_disconnect", args=[3])
    assert client.get(url).status_code == 405
    response = client.post(url, {"username": "alice"}, follow=True)
    assert response.redirect_chain[-1][0] == reverse(CHANGELIST)
    assert "Session 3 of alice disconnected." in response.content.decode()
    req = [r for r in fake_admin.requests if r.method == "DELETE"][-1]
    assert (req.path, req.query) == ("/sessions/alice", {"session": ["3"]})


def test_viewing_needs_the_view_permission_and_disconnecting_its_own(client, staff, fake_admin, django_user_model):
    fake_admin.sessions = [session_json(3, "alice", 1)]
    client.force_login(staff)
    html = client.get(reverse(CHANGELIST)).content.decode()
    assert "192.0.2.10:50112" in html
    assert 'value="Disconnect"' not in html
    url = reverse("admin:django_tether_livesession_disconnect", args=[3])
    assert client.post(url, {"username": "alice"}).status_code == 403
    assert not [r for r in fake_admin.requests if r.method == "DELETE"]
    nobody = django_user_model.objects.create_user("nobody", password="pw", is_staff=True)
    client.force_login(nobody)
    assert client.get(reverse(CHANGELIST)).status_code == 403


def test_there_is_no_add_change_or_delete(client, admin_user, fake_admin):
    client.force_login(admin_user)
    html = client.get(reverse("admin:index")).content.decode()
    assert "/admin/django_tether/livesession/add/" not in html
