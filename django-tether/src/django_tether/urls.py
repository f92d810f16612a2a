"""``path("tether/", include("django_tether.urls"))``: the URL tether serve --forward points at."""

from django.urls import path

from . import views

app_name = "django_tether"

urlpatterns = [
    path("call/<path:name>", views.call, name="call"),
    path("notify/<path:name>", views.notify, name="notify"),
    path("event", views.event, name="event"),
]
