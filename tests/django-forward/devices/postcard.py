"""The few postcard encodings the test methods use (strings, lists of
strings): varint lengths, UTF-8 bytes."""


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(data, i=0):
    n = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def string(s):
    b = s.encode()
    return varint(len(b)) + b


def read_string(data):
    """The one string that is all of `data` (ValueError otherwise)."""
    n, i = read_varint(data)
    if i + n != len(data):
        raise ValueError("not exactly one string")
    return data[i:].decode()


def strings(items):
    return varint(len(items)) + b"".join(string(s) for s in items)
