"""Handlers of the test app, found by django_tether's autodiscovery."""

from django.core.exceptions import PermissionDenied, ValidationError
from django.dispatch import receiver
from django.shortcuts import get_object_or_404

import django_tether
from django_tether import postcard
from django_tether.signals import device_connected, device_disconnected

from .models import Connection, Press, Reading

READING = postcard.struct(celsius=postcard.f32, sensor=postcard.string)
FAIL_ONCE = {"armed": False}


@django_tether.method("report_temperature", codec="json")
def report_temperature(request, args):
    if not isinstance(args, dict) or not isinstance(args.get("celsius"), (int, float)):
        raise django_tether.BadArguments("expected {\"celsius\": number}")
    Reading.objects.create(owner=request.user, celsius=args["celsius"])
    return {"user": request.user.get_username(), "count": Reading.objects.filter(owner=request.user).count()}


@django_tether.method("report_reading", codec=postcard.Codec(args=READING, reply=postcard.u32))
def report_reading(request, reading):
    Reading.objects.create(owner=request.user, celsius=reading["celsius"])
    return Reading.objects.filter(owner=request.user).count()


@django_tether.method("raw")
def raw(request, args):
    return b"raw:" + args + b":" + str(request.tether.session_id).encode()


@django_tether.method
def whoami_django(request, args):
    return request.user.get_username().encode()


@django_tether.method("temp/room 1")
def odd_name(request, args):
    return b"odd"


@django_tether.method("forbidden")
def forbidden(request, args):
    raise PermissionDenied("not for you")


@django_tether.method("invalid")
def invalid(request, args):
    raise ValidationError("value too large")


@django_tether.method("app_error")
def app_error(request, args):
    raise django_tether.ApplicationError(1042, "the valve is stuck")


@django_tether.method("missing")
def missing(request, args):
    get_object_or_404(Reading, pk=-1)


@django_tether.method("crash")
def crash(request, args):
    raise RuntimeError("handler bug")


@django_tether.method("returns_str")
def returns_str(request, args):
    return "not bytes"


@django_tether.method("async_echo")
async def async_echo(request, args):
    return args


@django_tether.notification("button", codec="json")
def button(request, args):
    Press.objects.create(owner=request.user, button=args["button"])
    if FAIL_ONCE["armed"]:
        FAIL_ONCE["armed"] = False
        raise RuntimeError("database hiccup")


@receiver(device_connected)
def on_connected(sender, user, username, session_id, **kwargs):
    Connection.objects.create(username=username, session_id=session_id, event="connected", had_user=user is not None)


@receiver(device_disconnected)
def on_disconnected(sender, user, username, session_id, reason, **kwargs):
    Connection.objects.create(
        username=username, session_id=session_id, event="disconnected", reason=reason, had_user=user is not None
    )
