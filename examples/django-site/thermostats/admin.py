from django.contrib import admin

from .models import DeviceEvent, Reading, Setpoint


@admin.register(Reading)
class ReadingAdmin(admin.ModelAdmin):
    list_display = ["owner", "celsius", "at"]
    list_filter = ["owner"]


@admin.register(Setpoint)
class SetpointAdmin(admin.ModelAdmin):
    list_display = ["owner", "target_celsius"]


@admin.register(DeviceEvent)
class DeviceEventAdmin(admin.ModelAdmin):
    list_display = ["at", "username", "kind", "detail", "session_id"]
    list_filter = ["kind"]
