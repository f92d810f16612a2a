"""Handlers for device calls and notifications, registered by decorators in each app's tether.py."""

import inspect

from asgiref.sync import async_to_sync
from django.core.exceptions import ImproperlyConfigured

from . import codecs

__all__ = ["AlreadyRegistered", "Handler", "method", "notification", "methods", "notifications"]

# Answered by tether-server itself unless it runs with --forward-builtin NAME.
SERVER_BUILTINS = frozenset({"echo", "whoami", "server_time"})


class AlreadyRegistered(ImproperlyConfigured):
    """Two different functions claim the same method or notification name."""


class Handler:
    """A registered function with its name, kind and codec."""

    def __init__(self, kind, name, func, codec):
        self.kind = kind
        self.name = name
        self.func = func
        self.codec = codec
        self.is_async = inspect.iscoroutinefunction(func)

    def __call__(self, request, args):
        if self.is_async:
            return async_to_sync(self.func)(request, args)
        return self.func(request, args)

    @property
    def qualname(self):
        return "%s.%s" % (self.func.__module__, self.func.__qualname__)

    def __repr__(self):
        return "<%s %r -> %s (%r)>" % (self.kind, self.name, self.qualname, self.codec)


_registries = {"method": {}, "notification": {}}


def _register(kind, name, codec):
    codec = codecs.resolve(codec)

    def decorator(func):
        handler_name = name if name is not None else func.__name__
        if not isinstance(handler_name, str) or not handler_name:
            raise ImproperlyConfigured("a %s name is a non-empty string, got %r" % (kind, handler_name))
        try:
            inspect.signature(func).bind(None, None)
        except TypeError:
            raise ImproperlyConfigured(
                "%s handler %s.%s must take (request, args)" % (kind, func.__module__, func.__qualname__)
            ) from None
        handler = Handler(kind, handler_name, func, codec)
        registry = _registries[kind]
        old = registry.get(handler_name)
        # A module imported twice registers the same function again: fine.
        if old is not None and old.qualname != handler.qualname:
            raise AlreadyRegistered(
                "%s %r is already handled by %s; %s cannot take it too"
                % (kind, handler_name, old.qualname, handler.qualname)
            )
        registry[handler_name] = handler
        return func

    return decorator


def method(name=None, *, codec=None):
    """Registers ``f(request, args)`` as the handler of device calls named ``name``.

    ``args`` is the call's argument bytes decoded with ``codec`` (None: the raw
    bytes; "json"; a postcard.Codec); the return value, encoded with the same
    codec, is the device's reply. ``request.user`` is the device's Django user,
    ``request.tether`` the session (session_id, peer, request_id, ...).
    Without a name the function's name is the method's.
    """
    if callable(name):  # bare @method
        return _register("method", None, codec)(name)
    return _register("method", name, codec)


def notification(name=None, *, codec=None):
    """Registers ``f(request, args)`` for device notifications named ``name``.

    Notifications are delivered at least once and in order per session; one
    already handled is never handled twice. The return value is ignored.
    """
    if callable(name):
        return _register("notification", None, codec)(name)
    return _register("notification", name, codec)


def get(kind, name):
    """The handler for ``name``, or None."""
    return _registries[kind].get(name)


def methods():
    """Registered method handlers by name (a copy)."""
    return dict(_registries["method"])


def notifications():
    """Registered notification handlers by name (a copy)."""
    return dict(_registries["notification"])


def unregister(kind, name):
    """Removes a handler (for tests)."""
    _registries[kind].pop(name, None)
