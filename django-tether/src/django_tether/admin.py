"""The admin's "Live device sessions" page: who is connected now, and a disconnect button."""

import logging

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils.translation import gettext as _

from . import client
from .exceptions import TetherError
from .models import LiveSession

logger = logging.getLogger("django_tether")


@admin.register(LiveSession)
class LiveSessionAdmin(admin.ModelAdmin):
    """Reads ``GET /sessions`` of the server's admin API; disconnects with ``DELETE /sessions/...``."""

    change_list_template = "admin/django_tether/livesession/change_list.html"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_disconnect_permission(self, request):
        return request.user.has_perm("%s.disconnect_livesession" % self.opts.app_label)

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<int:session_id>/disconnect/",
                self.admin_site.admin_view(self.disconnect_view),
                name="%s_%s_disconnect" % info,
            ),
            path("", self.admin_site.admin_view(self.changelist_view), name="%s_%s_changelist" % info),
        ]

    def _user_links(self, sessions):
        model = get_user_model()
        users = model._default_manager.in_bulk({s.user_id for s in sessions})
        links = {}
        for pk, user in users.items():
            try:
                url = reverse(
                    "%s:%s_%s_change" % (self.admin_site.name, model._meta.app_label, model._meta.model_name),
                    args=[pk],
                )
            except NoReverseMatch:
                url = None
            links[pk] = (user, url)
        return links

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        query = request.GET.get("q", "").strip()
        error = None
        try:
            sessions = client.sessions(query or None)
        except TetherError as e:
            sessions, error = [], str(e)
        links = self._user_links(sessions)
        rows = [
            {
                "session": s,
                "user": links.get(s.user_id, (None, None))[0],
                "user_url": links.get(s.user_id, (None, None))[1],
                "disconnect_url": reverse(
                    "%s:%s_%s_disconnect" % (self.admin_site.name, self.opts.app_label, self.opts.model_name),
                    args=[s.id],
                ),
            }
            for s in sessions
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "title": _("Live device sessions"),
            "rows": rows,
            "error": error,
            "query": query,
            "can_disconnect": self.has_disconnect_permission(request),
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.change_list_template, context)

    def disconnect_view(self, request, session_id):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_disconnect_permission(request):
            raise PermissionDenied
        username = request.POST.get("username", "")
        changelist = reverse(
            "%s:%s_%s_changelist" % (self.admin_site.name, self.opts.app_label, self.opts.model_name)
        )
        if not username:
            messages.error(request, _("No username given."))
            return HttpResponseRedirect(changelist)
        try:
            ended = client.disconnect(username, session=session_id)
        except TetherError as e:
            messages.error(request, _("Could not disconnect session %(id)s: %(error)s") % {"id": session_id, "error": e})
            return HttpResponseRedirect(changelist)
        logger.info("tether: %s disconnected session %s of %r in the admin", request.user, session_id, username)
        if ended:
            messages.success(request, _("Session %(id)s of %(user)s disconnected.") % {"id": session_id, "user": username})
        else:
            messages.warning(request, _("Session %(id)s had already ended.") % {"id": session_id})
        return HttpResponseRedirect(changelist)
