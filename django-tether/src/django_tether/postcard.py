"""postcard, the serde format Tether devices use, for Python handlers.

A device written with tether-core encodes a method's arguments and reply with
postcard (https://postcard.jamesmunns.com/wire-format). This module describes
such a type once and encodes or decodes it::

    from django_tether import postcard

    READING = postcard.struct(celsius=postcard.f32, sensor=postcard.string)
    READING.encode({"celsius": 21.5, "sensor": "hall"})   # b'\\x00\\x00\\xacA\\x04hall'
    READING.decode(b'\\x00\\x00\\xacA\\x04hall')           # {'celsius': 21.5, 'sensor': 'hall'}

    @django_tether.method("report", codec=postcard.Codec(args=READING, reply=postcard.unit))
    def report(request, reading): ...

    django_tether.call(user, "device_info", codec=postcard.DEVICE_INFO)
    # {'firmware': 'thermostat 1.2', 'uptime_secs': 4711}

Types: ``u8``..``u128``, ``i8``..``i128``, ``f32``, ``f64``, ``bool_``,
``string``, ``bytes_``, ``unit``; ``option(T)``, ``seq(T)``, ``array(T, n)``,
``tuple_(A, B, ...)``, ``struct(name=T, ...)`` (a dict, fields in order),
``enum(Variant=T_or_None, ...)`` (a ``(name, value)`` pair). Decoding is
strict: a truncated buffer, trailing bytes, an out-of-range varint, a bool
that is not 0 or 1 or invalid UTF-8 raise :class:`DecodeError` with the offset.

Why not a package from PyPI: ``pypostcard`` 0.1 (pre-alpha) needs pytest and
pyserde at run time and encodes unsupported types as nothing with a warning;
``pohlednice`` 0.2 needs Python >= 3.12 and ships editor backup files. The
format is small enough to do here exactly.
"""

import math
import struct as _struct

__all__ = [
    "Codec",
    "DecodeError",
    "EncodeError",
    "Type",
    "array",
    "bool_",
    "bytes_",
    "enum",
    "f32",
    "f64",
    "i8",
    "i16",
    "i32",
    "i64",
    "i128",
    "option",
    "seq",
    "string",
    "struct",
    "tuple_",
    "u8",
    "u16",
    "u32",
    "u64",
    "u128",
    "unit",
    "ECHO",
    "WHOAMI",
    "SERVER_TIME",
    "DEVICE_INFO",
    "IDENTITY",
    "DEVICE_STATUS",
]


class DecodeError(ValueError):
    """The bytes are not a valid encoding of the type."""


class EncodeError(ValueError):
    """The value does not fit the type."""


class Type:
    """A postcard type: :meth:`encode` a value, :meth:`decode` bytes."""

    name = "type"

    def encode(self, value):
        """The postcard bytes of ``value``."""
        out = bytearray()
        self._write(value, out)
        return bytes(out)

    def decode(self, data):
        """The value encoded in ``data`` (all of it: trailing bytes are an error)."""
        data = bytes(data)
        value, pos = self._read(data, 0)
        if pos != len(data):
            raise DecodeError("%d trailing bytes after %s at offset %d" % (len(data) - pos, self.name, pos))
        return value

    def _write(self, value, out):
        raise NotImplementedError

    def _read(self, data, pos):
        raise NotImplementedError

    def __repr__(self):
        return "postcard.%s" % self.name


def _take(data, pos, n, what):
    end = pos + n
    if end > len(data):
        raise DecodeError("%s at offset %d: need %d bytes, %d left" % (what, pos, n, len(data) - pos))
    return data[pos:end], end


def _write_varint(n, out):
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _read_varint(data, pos, bits, what):
    max_len = math.ceil(bits / 7)
    value = shift = 0
    start = pos
    for _ in range(max_len):
        if pos >= len(data):
            raise DecodeError("%s at offset %d: varint cut short" % (what, start))
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if value >> bits:
                raise DecodeError("%s at offset %d: varint exceeds %d bits" % (what, start, bits))
            return value, pos
    raise DecodeError("%s at offset %d: varint longer than %d bytes" % (what, start, max_len))


def _check_int(value, lo, hi, name):
    if isinstance(value, bool) or not isinstance(value, int):
        raise EncodeError("%s needs an int, got %s" % (name, type(value).__name__))
    if not lo <= value <= hi:
        raise EncodeError("%d does not fit %s (%d..=%d)" % (value, name, lo, hi))


class _Unsigned(Type):
    def __init__(self, bits):
        self.bits = bits
        self.name = "u%d" % bits

    def _write(self, value, out):
        _check_int(value, 0, (1 << self.bits) - 1, self.name)
        if self.bits == 8:
            out.append(value)
        else:
            _write_varint(value, out)

    def _read(self, data, pos):
        if self.bits == 8:
            raw, pos = _take(data, pos, 1, self.name)
            return raw[0], pos
        return _read_varint(data, pos, self.bits, self.name)


class _Signed(Type):
    def __init__(self, bits):
        self.bits = bits
        self.name = "i%d" % bits

    def _write(self, value, out):
        _check_int(value, -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1, self.name)
        if self.bits == 8:
            out.append(value & 0xFF)
        else:
            _write_varint(value << 1 if value >= 0 else ((-value) << 1) - 1, out)

    def _read(self, data, pos):
        if self.bits == 8:
            raw, pos = _take(data, pos, 1, self.name)
            return raw[0] - 256 if raw[0] >= 128 else raw[0], pos
        zigzag, pos = _read_varint(data, pos, self.bits, self.name)
        return (zigzag >> 1) ^ -(zigzag & 1), pos


class _Float(Type):
    def __init__(self, fmt, name):
        self.fmt, self.name, self.size = fmt, name, _struct.calcsize(fmt)

    def _write(self, value, out):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EncodeError("%s needs a number, got %s" % (self.name, type(value).__name__))
        try:
            out += _struct.pack(self.fmt, value)
        except OverflowError:
            raise EncodeError("%r does not fit %s" % (value, self.name)) from None

    def _read(self, data, pos):
        raw, pos = _take(data, pos, self.size, self.name)
        return _struct.unpack(self.fmt, raw)[0], pos


class _Bool(Type):
    name = "bool_"

    def _write(self, value, out):
        if not isinstance(value, bool):
            raise EncodeError("bool_ needs True or False, got %r" % (value,))
        out.append(1 if value else 0)

    def _read(self, data, pos):
        raw, end = _take(data, pos, 1, "bool")
        if raw[0] > 1:
            raise DecodeError("bool at offset %d: 0x%02x is neither 0 nor 1" % (pos, raw[0]))
        return raw[0] == 1, end


class _Bytes(Type):
    name = "bytes_"

    def _write(self, value, out):
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise EncodeError("bytes_ needs bytes, got %s" % type(value).__name__)
        value = bytes(value)
        _write_varint(len(value), out)
        out += value

    def _read(self, data, pos):
        n, pos = _read_varint(data, pos, 64, "length of " + self.name)
        return _take(data, pos, n, self.name)


class _String(_Bytes):
    name = "string"

    def _write(self, value, out):
        if not isinstance(value, str):
            raise EncodeError("string needs a str, got %s" % type(value).__name__)
        super()._write(value.encode("utf-8"), out)

    def _read(self, data, pos):
        start = pos
        raw, pos = super()._read(data, pos)
        try:
            return raw.decode("utf-8"), pos
        except UnicodeDecodeError as e:
            raise DecodeError("string at offset %d: invalid UTF-8 (%s)" % (start, e.reason)) from None


class _Unit(Type):
    name = "unit"

    def _write(self, value, out):
        if value is not None and value != ():
            raise EncodeError("unit needs None, got %r" % (value,))

    def _read(self, data, pos):
        return None, pos


class option(Type):
    """``Option<T>``: None, or a value of ``T``."""

    def __init__(self, inner):
        self.inner = inner
        self.name = "option(%s)" % inner.name

    def _write(self, value, out):
        if value is None:
            out.append(0)
        else:
            out.append(1)
            self.inner._write(value, out)

    def _read(self, data, pos):
        raw, end = _take(data, pos, 1, self.name)
        if raw[0] == 0:
            return None, end
        if raw[0] == 1:
            return self.inner._read(data, end)
        raise DecodeError("%s at offset %d: tag 0x%02x is neither 0 nor 1" % (self.name, pos, raw[0]))


class seq(Type):
    """``Vec<T>`` / ``&[T]`` / ``heapless::Vec<T, N>``: a list."""

    def __init__(self, inner):
        self.inner = inner
        self.name = "seq(%s)" % inner.name

    def _write(self, value, out):
        if isinstance(value, (str, bytes, dict)):
            raise EncodeError("%s needs a list, got %s" % (self.name, type(value).__name__))
        items = list(value)
        _write_varint(len(items), out)
        for item in items:
            self.inner._write(item, out)

    def _read(self, data, pos):
        n, pos = _read_varint(data, pos, 64, "length of " + self.name)
        # Every item takes a byte at least (unit: none, so a cap on the count).
        limit = 0xFFFF if isinstance(self.inner, _Unit) else len(data) - pos
        if n > limit:
            raise DecodeError("%s: %d items announced, %d bytes left" % (self.name, n, len(data) - pos))
        items = []
        for _ in range(n):
            item, pos = self.inner._read(data, pos)
            items.append(item)
        return items, pos


class tuple_(Type):
    """A tuple (or a tuple struct): the fields one after another."""

    def __init__(self, *items):
        self.items = items
        self.name = "tuple_(%s)" % ", ".join(t.name for t in items)

    def _write(self, value, out):
        value = tuple(value)
        if len(value) != len(self.items):
            raise EncodeError("%s needs %d items, got %d" % (self.name, len(self.items), len(value)))
        for t, v in zip(self.items, value):
            t._write(v, out)

    def _read(self, data, pos):
        values = []
        for t in self.items:
            v, pos = t._read(data, pos)
            values.append(v)
        return tuple(values), pos


class array(tuple_):
    """``[T; n]``: n values of T, no length prefix (a list)."""

    def __init__(self, inner, n):
        super().__init__(*([inner] * n))
        self.name = "array(%s, %d)" % (inner.name, n)

    def _read(self, data, pos):
        values, pos = super()._read(data, pos)
        return list(values), pos


class struct(Type):
    """A struct: a dict of its fields, encoded in the order given."""

    def __init__(self, **fields):
        self.fields = fields
        self.name = "struct(%s)" % ", ".join("%s=%s" % (k, t.name) for k, t in fields.items())

    def _write(self, value, out):
        if not isinstance(value, dict):
            raise EncodeError("%s needs a dict, got %s" % (self.name, type(value).__name__))
        missing = [k for k in self.fields if k not in value]
        extra = [k for k in value if k not in self.fields]
        if missing or extra:
            raise EncodeError("%s: missing %s, unknown %s" % (self.name, missing, extra))
        for k, t in self.fields.items():
            try:
                t._write(value[k], out)
            except EncodeError as e:
                raise EncodeError("field %r: %s" % (k, e)) from None

    def _read(self, data, pos):
        value = {}
        for k, t in self.fields.items():
            value[k], pos = t._read(data, pos)
        return value, pos


class enum(Type):
    """A Rust enum: ``(variant_name, value)``; a unit variant's value is None.

    ``enum(Off=None, Level=postcard.u8)`` encodes ``("Level", 3)`` as
    ``01 03`` (the variant's index as a varint, then its value).
    """

    def __init__(self, **variants):
        self.variants = [(k, unit if t is None else t) for k, t in variants.items()]
        self.index = {k: i for i, (k, _) in enumerate(self.variants)}
        self.name = "enum(%s)" % ", ".join(self.index)

    def _write(self, value, out):
        if isinstance(value, str):
            value = (value, None)
        try:
            variant, payload = value
            i = self.index[variant]
        except (TypeError, ValueError, KeyError):
            raise EncodeError("%s needs (variant, value) with a known variant, got %r" % (self.name, value)) from None
        _write_varint(i, out)
        self.variants[i][1]._write(payload, out)

    def _read(self, data, pos):
        start = pos
        i, pos = _read_varint(data, pos, 32, self.name)
        if i >= len(self.variants):
            raise DecodeError("%s at offset %d: no variant %d" % (self.name, start, i))
        variant, t = self.variants[i]
        payload, pos = t._read(data, pos)
        return (variant, payload), pos


u8, u16, u32, u64, u128 = (_Unsigned(b) for b in (8, 16, 32, 64, 128))
i8, i16, i32, i64, i128 = (_Signed(b) for b in (8, 16, 32, 64, 128))
f32 = _Float("<f", "f32")
f64 = _Float("<d", "f64")
bool_ = _Bool()
bytes_ = _Bytes()
string = _String()
unit = _Unit()


class Codec:
    """A method's argument and reply types, for ``codec=`` of
    :func:`django_tether.method` (decodes the arguments, encodes the reply)
    and of :func:`django_tether.call` (encodes the arguments, decodes the reply).
    """

    def __init__(self, args=unit, reply=unit):
        self.args = args
        self.reply = reply

    def decode_args(self, data):
        return self.args.decode(data)

    def encode_args(self, value):
        return self.args.encode(value)

    def decode_reply(self, data):
        return self.reply.decode(data)

    def encode_reply(self, value):
        return self.reply.encode(value)

    def __repr__(self):
        return "postcard.Codec(args=%r, reply=%r)" % (self.args, self.reply)


# The built-in methods of docs/PROTOCOL.md (tether_core::method::builtin).
IDENTITY = struct(user_id=i64, username=string, session_id=u64, is_superuser=bool_)
DEVICE_STATUS = struct(firmware=string, uptime_secs=u64)
ECHO = Codec(args=string, reply=string)
WHOAMI = Codec(args=unit, reply=IDENTITY)
SERVER_TIME = Codec(args=unit, reply=u64)
DEVICE_INFO = Codec(args=unit, reply=DEVICE_STATUS)
