from django.contrib import admin
from django.urls import include, path

from thermostats import views

urlpatterns = [
    path("admin/", admin.site.urls),
    # tether serve --forward http://127.0.0.1:8000/tether
    path("tether/", include("django_tether.urls")),
    path("thermostats/<str:username>/info", views.device_info, name="device-info"),
]
