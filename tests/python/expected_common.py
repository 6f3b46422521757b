"""What both oracles (torch 1.13 under /usr/bin/python3, torch 2.13 under .venv/bin/python)
write into expected.json the same way. No torch import here: the helpers that need torch take
it as an argument, so this module loads under either interpreter.

The expected.json schema is described in tests/python/README.md."""

import hashlib


class CaseError(Exception):
    pass


def name_seed(name):
    """A stable 48-bit seed from a key, so each tensor's random values depend on its name only."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:6], "little")


def generator(torch, seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def randn(torch, name, *shape, dtype=None):
    """Normal values seeded by `name`, made as float32 and then cast (identical in 1.13 and 2.13)."""
    t = torch.randn(*shape, generator=generator(torch, name_seed(name)))
    return t if dtype is None else t.to(dtype)


def bin_name(fqn):
    """File name for a key's bytes: the key itself when it is a safe file name, else a hash."""
    raw = fqn.encode("utf-8", "surrogatepass")
    if (0 < len(raw) <= 200 and "/" not in fqn and "\0" not in fqn and fqn not in (".", "..")
            and not fqn.startswith(".")):
        return fqn + ".bin"
    return "key-%s.bin" % hashlib.sha256(raw).hexdigest()[:24]


def py_type(v):
    """Type description in the expected.json style: int, str, list[int,int], dict[str:int]."""
    if isinstance(v, (list, tuple)):
        return "%s[%s]" % (type(v).__name__, ",".join(py_type(e) for e in v))
    if isinstance(v, dict):
        return "dict[%s]" % ",".join("%s:%s" % (py_type(k), py_type(e)) for k, e in v.items())
    return type(v).__name__


def to_json(v):
    """The JSON form of a BYTE_IO value: tuples and lists become arrays, dict keys strings,
    bytes a string of their UTF-8 decoding with U+FFFD for each byte that is not valid UTF-8
    (the convention `dcpp` documents for bytes)."""
    if isinstance(v, (list, tuple)):
        return [to_json(e) for e in v]
    if isinstance(v, dict):
        return {str(k): to_json(e) for k, e in v.items()}
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError("value of type %s has no JSON form" % type(v).__name__)


def same_object(a, b):
    """Equal values of identical Python types, recursively (a tuple is not a list, True not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_object(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_object(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:
        return b != b
    return a == b
