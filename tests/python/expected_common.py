"""What both oracles (torch 1.13 under /usr/bin/python3, torch 2.13 under .venv/bin/python)
write into expected.json the same way, and the value helpers both case scripts use. No torch import here: the helpers that need torch take
it as an argument, so this module loads under either interpreter.

The expected.json schema is described in tests/python/README.md."""

import hashlib
import traceback
from pathlib import Path


class CaseError(Exception):
    pass


def name_seed(name):
    """A stable 48-bit seed from a key, so each tensor's random values depend on its name only."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:6], "little")


def generator(torch, seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# Raw bit patterns that every float dtype case carries: zeros, infinities, NaNs with payloads,
# subnormals, extremes.
F32_BITS = [0x00000000, 0x80000000, 0x3F800000, 0x7F800000, 0xFF800000, 0x7FC00000,
            0x7FC00001, 0xFFC00000, 0x7F800001, 0x00000001, 0x80000001, 0x7F7FFFFF,
            0x00800000, 0xFF7FFFFF]
F64_BITS = [0x0000000000000000, 0x8000000000000000, 0x3FF0000000000000, 0x7FF0000000000000,
            0xFFF0000000000000, 0x7FF8000000000000, 0x7FF8000000000001, 0xFFF8000000000000,
            0x7FF0000000000001, 0x0000000000000001, 0x7FEFFFFFFFFFFFFF, 0x0010000000000000]
F16_BITS = [0x0000, 0x8000, 0x3C00, 0x7C00, 0xFC00, 0x7E00, 0x7E01, 0xFE00, 0x7C01, 0x0001,
            0x8001, 0x7BFF, 0x0400, 0xFBFF]
BF16_BITS = [0x0000, 0x8000, 0x3F80, 0x7F80, 0xFF80, 0x7FC0, 0x7FC1, 0xFFC0, 0x7F81, 0x0001,
             0x8001, 0x7F7F, 0x0080, 0xFF7F]


def with_bits(torch, t, int_dtype, bits, patterns):
    """Overwrite the first len(patterns) elements of t with raw bit patterns."""
    flat = t.view(-1).view(int_dtype)
    flat[: len(patterns)] = torch.tensor(
        [p - (1 << bits) if p >= (1 << (bits - 1)) else p for p in patterns], dtype=int_dtype)
    return t


def ints(torch, name, dtype, lo, hi, n, extremes):
    """n integers in [lo, hi) seeded by `name`, starting with `extremes`."""
    t = torch.randint(lo, hi, (n,), generator=generator(torch, name_seed(name)), dtype=torch.int64)
    t[: len(extremes)] = torch.tensor(extremes, dtype=torch.int64)
    return t.to(dtype)


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


# ---- What the save checks of both oracles (save_check.py, save_check113.py) share.


def fqn_of(path):
    """The flat key of a nested path, as torch's flatten_state_dict joins it."""
    return ".".join(str(p) for p in path)


def expected_tensor(torch, spec):
    """A MANIFEST tensor (tests/python/README.md): its `bin` bytes as `dtype` and `shape`."""
    dtype = getattr(torch, spec["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError("torch has no dtype %r" % spec["dtype"])
    raw = Path(spec["bin"]).read_bytes()
    if not raw:  # torch 1.13's frombuffer refuses an empty buffer
        return torch.empty(spec["shape"], dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(spec["shape"])


def same_tensor(torch, got, want, as_bytes):
    """None if equal bit for bit (compared as `as_bytes` views), else a reason."""
    if got.dtype != want.dtype:
        return "dtype %s, expected %s" % (got.dtype, want.dtype)
    if tuple(got.shape) != tuple(want.shape):
        return "shape %s, expected %s" % (tuple(got.shape), tuple(want.shape))
    a, b = as_bytes(got), as_bytes(want)
    if not torch.equal(a, b):
        diff = (a != b).nonzero()
        return "bytes differ (first at byte %d of %d)" % (int(diff[0]), b.numel())
    return None


def report(name, fn, *args):
    """Runs one check: prints `ok NAME` or `FAIL NAME: reason`; True when it passed."""
    try:
        bad = fn(*args)
    except Exception:
        bad = "exception:\n" + traceback.format_exc()
    if bad:
        print("FAIL %s: %s" % (name, bad), flush=True)
        return False
    print("ok %s" % name, flush=True)
    return True
