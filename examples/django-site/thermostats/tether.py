"""What thermostats call, and what Django hears of them (found by django_tether's autodiscovery).

The firmware shares these types (tests/tests/django_site.rs has the Rust side):

    struct Reading { celsius: f32 }                              // report_reading's args
    struct Setpoint { target_celsius: f32, readings: u32 }       // its reply
"""

import logging

from django.dispatch import receiver
from django.utils import timezone

import django_tether
from django_tether import postcard
from django_tether.signals import device_connected, device_disconnected

from .models import DeviceEvent, Reading, Setpoint

logger = logging.getLogger(__name__)

READING = postcard.struct(celsius=postcard.f32)
SETPOINT = postcard.struct(target_celsius=postcard.f32, readings=postcard.u32)


def _answer(user, celsius):
    if not -60 <= celsius <= 100:
        raise django_tether.BadArguments("%.1f °C is not a room temperature" % celsius)
    Reading.objects.create(owner=user, celsius=celsius)
    setpoint, _ = Setpoint.objects.get_or_create(owner=user)
    return {"target_celsius": setpoint.target_celsius, "readings": user.readings.count()}


@django_tether.method("report_reading", codec=postcard.Codec(args=READING, reply=SETPOINT))
def report_reading(request, reading):
    """The firmware's call: a postcard Reading in, a postcard Setpoint out."""
    return _answer(request.user, reading["celsius"])


@django_tether.method("report_temperature", codec="json")
def report_temperature(request, args):
    """The same in JSON: `tether call --user alice report_temperature '{"celsius": 21.5}'`."""
    if not isinstance(args, dict) or not isinstance(args.get("celsius"), (int, float)):
        raise django_tether.BadArguments('expected {"celsius": <number>}')
    return _answer(request.user, float(args["celsius"]))


@django_tether.notification("button", codec=postcard.Codec(args=postcard.string))
def button(request, which):
    DeviceEvent.objects.create(
        user=request.user,
        username=request.user.get_username(),
        session_id=request.tether.session_id,
        kind="button",
        detail=which,
        at=timezone.now(),
    )


@receiver(device_connected)
def on_connected(sender, user, username, session_id, peer, at, **kwargs):
    logger.info("%s connected from %s (session %s)", username, peer, session_id)
    DeviceEvent.objects.create(
        user=user, username=username, session_id=session_id, kind="connected", detail=peer, at=at
    )


@receiver(device_disconnected)
def on_disconnected(sender, user, username, session_id, reason, at, **kwargs):
    logger.info("%s disconnected (%s, session %s)", username, reason, session_id)
    DeviceEvent.objects.create(
        user=user, username=username, session_id=session_id, kind="disconnected", detail=reason, at=at
    )
