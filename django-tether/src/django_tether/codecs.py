"""How argument and reply bytes become Python values: ``codec=``.

A codec has four methods: ``decode_args(bytes)`` and ``encode_reply(value)``
(a handler's side), ``encode_args(value)`` and ``decode_reply(bytes)``
(``django_tether.call``'s side). Built in: ``None`` / ``"raw"`` (bytes as they
are), ``"json"``; ``django_tether.postcard.Codec`` for postcard types; any
object with those methods works.
"""

import json

from django.core.exceptions import ImproperlyConfigured

__all__ = ["JSON", "RAW", "CodecError", "resolve"]


class CodecError(ValueError):
    """The bytes do not decode with the method's codec."""


def _as_bytes(value, what):
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(
        "%s with the raw codec must be bytes (or None), got %s; "
        "use codec=\"json\" or a postcard.Codec for other values" % (what, type(value).__name__)
    )


class RawCodec:
    """Bytes in, bytes out: the call's ``args`` and ``result`` verbatim."""

    name = "raw"

    def decode_args(self, data):
        return bytes(data)

    def encode_reply(self, value):
        return _as_bytes(value, "a handler's reply")

    def encode_args(self, value):
        return _as_bytes(value, "args")

    def decode_reply(self, data):
        return bytes(data)

    def __repr__(self):
        return "codec 'raw'"


class JsonCodec:
    """UTF-8 JSON both ways; an empty body is None (no arguments)."""

    name = "json"

    def _decode(self, data):
        if not data:
            return None
        try:
            return json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise CodecError("not UTF-8 JSON: %s" % e) from None

    def _encode(self, value):
        from django.core.serializers.json import DjangoJSONEncoder

        return json.dumps(value, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False).encode()

    decode_args = decode_reply = _decode
    encode_args = encode_reply = _encode

    def __repr__(self):
        return "codec 'json'"


RAW = RawCodec()
JSON = JsonCodec()
_NAMED = {None: RAW, "raw": RAW, "json": JSON}
_METHODS = ("decode_args", "encode_reply", "encode_args", "decode_reply")


def resolve(codec):
    """The codec object for a ``codec=`` argument; ImproperlyConfigured if it is not one."""
    if isinstance(codec, str) or codec is None:
        try:
            return _NAMED[codec]
        except KeyError:
            raise ImproperlyConfigured(
                "unknown codec %r: use None (raw bytes), \"json\" or a django_tether.postcard.Codec" % codec
            ) from None
    missing = [m for m in _METHODS if not callable(getattr(codec, m, None))]
    if missing:
        raise ImproperlyConfigured("codec %r has no %s method" % (codec, ", ".join(missing)))
    return codec
