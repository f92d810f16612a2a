"""The endpoints tether-server forwards to (docs/DJANGO.md section 1).

``POST call/<method>``, ``POST notify/<name>`` and ``POST event``, each signed
by the server. Statuses follow the contract's table: 404 unknown method, 400
bad arguments, 403 refused (bad signature, stale timestamp, replay, inactive
user, PermissionDenied), 409 with X-Tether-Error-Code for an
ApplicationError, 5xx for a handler that failed (notifications and events
are then delivered again).
"""

import json
import logging
from dataclasses import dataclass
from urllib.parse import unquote

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError
from django.db import router, transaction
from django.http import Http404, HttpResponse
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import conf, registry, signals
from .exceptions import ApplicationError, BadArguments
from .models import SeenRequest
from .signature import SignatureError, quote, verify

logger = logging.getLogger("django_tether")

DISCONNECT_REASONS = frozenset(
    {"normal", "closed", "idle_timeout", "kicked", "replaced", "revoked", "shutdown", "protocol_error", "io_error"}
)


@dataclass(frozen=True)
class TetherRequest:
    """``request.tether``: what the server says about a forwarded request."""

    #: "call", "notify" or "event".
    kind: str
    #: The method or notification name ("" for an event).
    name: str
    #: 32 hex characters; the same on every retry of a notification or event.
    request_id: str
    #: The server's session id.
    session_id: int
    #: The Django user's primary key, as the server logged the user in.
    user_id: int
    #: The username (USERNAME_FIELD), unquoted.
    username: str
    #: The device's address, ``ip:port``.
    peer: str
    #: When the server signed the request (Unix seconds).
    timestamp: int


def _text(status, message, error_code=None):
    response = HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")
    if error_code is not None:
        response["X-Tether-Error-Code"] = str(error_code)
    return response


def _authenticate(request, kind, name, route):
    """The request's TetherRequest, or an HttpResponse refusing it."""
    secret = conf.get("FORWARD_SECRET")
    if not isinstance(secret, str) or len(secret) < conf.MIN_SECRET_LEN:
        logger.error("tether: refusing a forwarded %s: TETHER['FORWARD_SECRET'] is not configured", kind)
        return _text(503, "the application has no forward secret configured")
    try:
        values = verify(secret, request.headers, route, request.body, max_skew=float(conf.get("MAX_CLOCK_SKEW")))
    except SignatureError as e:
        logger.warning("tether: refused forwarded %s %r from %s: %s", kind, name, request.META.get("REMOTE_ADDR"), e)
        return _text(403, str(e))
    try:
        username = unquote(values["username"], errors="strict")
    except UnicodeDecodeError:
        return _text(403, "malformed header X-Tether-Username")
    return TetherRequest(
        kind=kind,
        name=name,
        request_id=values["request_id"],
        session_id=int(values["session"]),
        user_id=int(values["user_id"]),
        username=username,
        peer=values["peer"],
        timestamp=int(values["timestamp"]),
    )


def _user(tether):
    """The Django user of a forwarded request, or None if the row is gone."""
    model = get_user_model()
    try:
        return model._default_manager.get(pk=tether.user_id)
    except (model.DoesNotExist, ValueError, ValidationError):
        return None


def _active_user(tether):
    """The user, or a 403 when the account is gone or inactive (revoked before the server noticed)."""
    user = _user(tether)
    if user is None:
        return None, _text(403, "the user no longer exists")
    if not getattr(user, "is_active", True):
        return None, _text(403, "the user is inactive")
    return user, None


def _refusal(exc):
    """The response for an exception a handler raised, or None to let it propagate (500)."""
    if isinstance(exc, BadArguments):
        return _text(400, str(exc) or "bad arguments")
    if isinstance(exc, ValidationError):
        return _text(400, "; ".join(exc.messages))
    if isinstance(exc, PermissionDenied):
        return _text(403, str(exc) or "permission denied")
    if isinstance(exc, ApplicationError):
        return _text(409, exc.message, error_code=exc.code)
    if isinstance(exc, (Http404, ObjectDoesNotExist)):
        # Not 404: that tells the device the method does not exist.
        return _text(409, "not found: %s" % exc if str(exc) else "not found")
    return None


def _decode(handler, body):
    try:
        return handler.codec.decode_args(body), None
    except ValueError as e:
        return None, _text(400, "bad arguments for %s %r: %s" % (handler.kind, handler.name, e))


@csrf_exempt
@require_POST
def call(request, name):
    """A device calls ``name``: the handler's return value is the reply."""
    tether = _authenticate(request, "call", name, "call/" + quote(name))
    if isinstance(tether, HttpResponse):
        return tether
    user, refused = _active_user(tether)
    if refused:
        return refused
    if conf.get("REFUSE_REPLAYED_CALLS"):
        SeenRequest.objects.prune_now_and_then()
        if not SeenRequest.objects.record(tether.request_id, SeenRequest.CALL):
            logger.warning("tether: refused a replayed call %r (request id %s)", name, tether.request_id)
            return _text(403, "replayed request id")
    handler = registry.get("method", name)
    if handler is None:
        return _text(404, "unknown method %r" % name)
    request.user = user
    request.tether = tether
    args, refused = _decode(handler, request.body)
    if refused:
        return refused
    try:
        result = handler(request, args)
    except Exception as e:
        response = _refusal(e)
        if response is None:
            raise
        return response
    return HttpResponse(handler.codec.encode_reply(result), content_type="application/octet-stream")


def _deliver_once(tether, kind, run):
    """Runs ``run()`` unless this request id was delivered before, in one transaction with its record."""
    SeenRequest.objects.prune_now_and_then()
    try:
        with transaction.atomic(using=router.db_for_write(SeenRequest)):
            if not SeenRequest.objects.record(tether.request_id, kind):
                response = HttpResponse(status=204)
                response["X-Tether-Duplicate"] = "1"
                return response
            run()
    except Exception as e:
        response = _refusal(e)
        if response is None:
            raise
        return response
    return HttpResponse(status=204)


@csrf_exempt
@require_POST
def notify(request, name):
    """A device notification: handled once, however often it is delivered."""
    tether = _authenticate(request, "notify", name, "notify/" + quote(name))
    if isinstance(tether, HttpResponse):
        return tether
    user, refused = _active_user(tether)
    if refused:
        return refused
    handler = registry.get("notification", name)
    if handler is None:
        return _text(404, "unknown notification %r" % name)
    request.user = user
    request.tether = tether
    args, refused = _decode(handler, request.body)
    if refused:
        return refused
    return _deliver_once(tether, SeenRequest.NOTIFY, lambda: handler(request, args))


def _parse_event(body, tether):
    """The event's fields, or a message saying what is wrong."""
    try:
        event = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return None, "event body is not JSON: %s" % e
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return None, "event body is not an object with an \"event\" name"
    if event["event"] not in ("connected", "disconnected"):
        return event, None  # newer than this app: delivered, ignored
    for key, kind in (("session_id", int), ("user_id", int), ("username", str), ("peer", str), ("at", str)):
        if not isinstance(event.get(key), kind) or isinstance(event.get(key), bool):
            return None, "event field %r is missing or not %s" % (key, kind.__name__)
    if event["session_id"] != tether.session_id or event["user_id"] != tether.user_id:
        return None, "event body and headers disagree on the session or the user"
    try:
        at = parse_datetime(event["at"])
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        return None, "event field 'at' is not an RFC 3339 time with a zone"
    event["at"] = at
    # A reason newer than DISCONNECT_REASONS is passed on as it is.
    if event["event"] == "disconnected" and not isinstance(event.get("reason"), str):
        return None, "event field 'reason' is missing"
    return event, None


@csrf_exempt
@require_POST
def event(request):
    """A session event: device_connected / device_disconnected, sent once per event."""
    tether = _authenticate(request, "event", "", "event")
    if isinstance(tether, HttpResponse):
        return tether
    event, problem = _parse_event(request.body, tether)
    if problem:
        logger.warning("tether: refused event %s: %s", tether.request_id, problem)
        return _text(400, problem)
    signal = {"connected": signals.device_connected, "disconnected": signals.device_disconnected}.get(event["event"])
    if signal is None:
        logger.debug("tether: ignored event %r (unknown to this version)", event["event"])
        return HttpResponse(status=204)
    user = _user(tether)
    request.user = user if user is not None else AnonymousUser()
    request.tether = tether
    kwargs = {
        "user": user,
        "username": event["username"],
        "user_id": event["user_id"],
        "session_id": event["session_id"],
        "peer": event["peer"],
        "at": event["at"],
        "request": request,
    }
    if event["event"] == "disconnected":
        kwargs["reason"] = event["reason"]
    return _deliver_once(tether, SeenRequest.EVENT, lambda: signal.send(sender=get_user_model(), **kwargs))
