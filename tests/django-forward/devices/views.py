"""The application's side of docs/DJANGO.md, written from the contract
alone: every request's signature is checked by hand (devices.signature),
a device call `note` writes a row with the ORM and answers from the
database, notifications and events are stored once per request id."""
import json

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import postcard
from .models import Delivery, Note
from .signature import check, route_of


def refused(why):
    return HttpResponse(why, status=403, content_type="text/plain; charset=utf-8")


def reply(data):
    response = HttpResponse(data, content_type="application/octet-stream")
    # Without CommonMiddleware Django sets no length: gunicorn would chunk.
    response["Content-Length"] = str(len(data))
    return response


def caller(request):
    return int(request.META["HTTP_X_TETHER_USER_ID"]), int(request.META["HTTP_X_TETHER_SESSION"])


@csrf_exempt
@require_POST
def call(request, method):
    why = check(settings.TETHER_FORWARD_SECRET, route_of("call", method), request.META, request.body)
    if why:
        return refused(why)
    user_id, session = caller(request)
    if method == "echo":
        # tether serve --forward-builtin echo: the application answers the
        # built-in (bench/run's forwarded rows: the hop, no database).
        return reply(request.body)
    if method == "note":
        try:
            text = postcard.read_string(request.body)
        except ValueError:
            return HttpResponse("note takes one string", status=400, content_type="text/plain")
        note = Note.objects.create(user_id=user_id, session=session, text=text)
        stored = Note.objects.get(pk=note.pk)
        count = Note.objects.filter(user_id=user_id).count()
        return reply(postcard.string(f"note {stored.pk}: {stored.text} ({count} from this user)"))
    if method == "received":
        # The notifications of this user, in the order they arrived.
        names = Delivery.objects.filter(kind="notify", user_id=user_id).order_by("id")
        return reply(postcard.strings([postcard.read_string(bytes(d.body)) for d in names]))
    if method == "fail":
        raise RuntimeError("this view fails on purpose")
    if method == "app_error":
        response = HttpResponse("the valve is stuck", status=409, content_type="text/plain")
        response["X-Tether-Error-Code"] = "1001"
        return response
    return HttpResponse(f"no method {method}", status=404, content_type="text/plain")


def store(request, kind, name):
    user_id, session = caller(request)
    try:
        with transaction.atomic():
            Delivery.objects.create(
                request_id=request.META["HTTP_X_TETHER_REQUEST_ID"],
                kind=kind,
                name=name,
                body=request.body,
                session=session,
                user_id=user_id,
            )
    except IntegrityError:
        pass  # a retry of what was delivered already (at least once)
    return HttpResponse(status=204)


@csrf_exempt
@require_POST
def notify(request, name):
    why = check(settings.TETHER_FORWARD_SECRET, route_of("notify", name), request.META, request.body)
    if why:
        return refused(why)
    return store(request, "notify", name)


@csrf_exempt
@require_POST
def event(request):
    why = check(settings.TETHER_FORWARD_SECRET, route_of("event"), request.META, request.body)
    if why:
        return refused(why)
    body = json.loads(request.body)
    return store(request, "event", body["event"])
