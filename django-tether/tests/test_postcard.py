import math

import pytest

from django_tether import postcard as pc


@pytest.mark.parametrize(
    "t,value,hexed",
    [
        (pc.u8, 255, "ff"),
        (pc.u16, 300, "ac02"),
        (pc.u32, 127, "7f"),
        (pc.u32, 128, "8001"),
        (pc.u32, 2**32 - 1, "ffffffff0f"),
        (pc.u64, 2**64 - 1, "ffffffffffffffffff01"),
        (pc.i8, -1, "ff"),
        (pc.i16, -1, "01"),
        (pc.i32, 1, "02"),
        (pc.i32, -64, "7f"),
        (pc.i64, -(2**63), "ffffffffffffffffff01"),
        (pc.f32, 1.0, "0000803f"),
        (pc.f64, -2.5, "00000000000004c0"),
        (pc.bool_, True, "01"),
        (pc.string, "hi", "026869"),  # docs/PROTOCOL.md: echo's args
        (pc.string, "zo\u00eb", "047a6fc3ab"),
        (pc.bytes_, b"\x00\x01", "020001"),
        (pc.unit, None, ""),
        (pc.option(pc.u8), None, "00"),
        (pc.option(pc.u8), 5, "0105"),
        (pc.seq(pc.u16), [1, 300], "0201ac02"),
        (pc.array(pc.u8, 3), [1, 2, 3], "010203"),
        (pc.tuple_(pc.f32, pc.string), (0.0, "a"), "000000000161"),
        (pc.enum(Off=None, Level=pc.u8), ("Level", 3), "0103"),
        (pc.enum(Off=None, Level=pc.u8), ("Off", None), "00"),
        (
            pc.IDENTITY,
            {"user_id": 42, "username": "alice", "session_id": 7, "is_superuser": False},
            "5405616c6963650700",
        ),
        (pc.DEVICE_STATUS, {"firmware": "fw 1", "uptime_secs": 300}, "0466772031ac02"),
    ],
)
def test_encodings_follow_the_postcard_spec(t, value, hexed):
    assert t.encode(value).hex() == hexed
    expected = list(value) if isinstance(t, pc.array) else value
    assert t.decode(bytes.fromhex(hexed)) == expected


def test_floats_round_trip():
    assert pc.f64.decode(pc.f64.encode(math.pi)) == math.pi
    assert math.isnan(pc.f32.decode(pc.f32.encode(float("nan"))))


@pytest.mark.parametrize(
    "t,hexed,message",
    [
        (pc.u32, "ffffffff10", "exceeds 32 bits"),
        (pc.u16, "ffff7f", "exceeds 16 bits"),
        (pc.u32, "ffffffffff01", "longer than 5 bytes"),
        (pc.u32, "80", "cut short"),
        (pc.u8, "", "need 1 bytes"),
        (pc.bool_, "02", "neither 0 nor 1"),
        (pc.string, "02ff", "need 2 bytes"),
        (pc.string, "01ff", "invalid UTF-8"),
        (pc.option(pc.u8), "0205", "neither 0 nor 1"),
        (pc.seq(pc.u8), "ffffffff0f", "items announced"),
        (pc.seq(pc.unit), "ffffffff0f", "items announced"),
        (pc.enum(A=None), "01", "no variant 1"),
        (pc.u8, "0102", "trailing"),
    ],
)
def test_bad_bytes_are_decode_errors(t, hexed, message):
    with pytest.raises(pc.DecodeError, match=message):
        t.decode(bytes.fromhex(hexed))


@pytest.mark.parametrize(
    "t,value,message",
    [
        (pc.u8, 256, "does not fit u8"),
        (pc.u32, -1, "does not fit u32"),
        (pc.i8, 128, "does not fit i8"),
        (pc.u32, 1.5, "needs an int"),
        (pc.u32, True, "needs an int"),
        (pc.bool_, 1, "True or False"),
        (pc.string, b"x", "needs a str"),
        (pc.f32, 1e300, "does not fit f32"),
        (pc.struct(a=pc.u8), {"a": 1, "b": 2}, "unknown"),
        (pc.struct(a=pc.u8), {"a": 300}, "field 'a'"),
        (pc.tuple_(pc.u8, pc.u8), (1,), "needs 2 items"),
        (pc.enum(A=None), ("B", None), "known variant"),
        (pc.unit, 0, "needs None"),
    ],
)
def test_values_that_do_not_fit_are_encode_errors(t, value, message):
    with pytest.raises(pc.EncodeError, match=message):
        t.encode(value)


def test_codecs_for_the_builtin_methods():
    assert pc.ECHO.encode_args("hi") == b"\x02hi"
    assert pc.ECHO.decode_reply(b"\x02hi") == "hi"
    assert pc.SERVER_TIME.decode_reply(pc.u64.encode(1_765_000_000_000)) == 1_765_000_000_000
    assert pc.DEVICE_INFO.encode_args(None) == b""
    assert pc.WHOAMI.decode_reply(bytes.fromhex("5405616c6963650700"))["username"] == "alice"
