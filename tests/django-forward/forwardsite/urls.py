from django.urls import path

from devices import views

# Mounted under /tether/: tether serve --forward http://HOST:PORT/tether
urlpatterns = [
    path("tether/call/<path:method>", views.call),
    path("tether/notify/<path:name>", views.notify),
    path("tether/event", views.event),
]
