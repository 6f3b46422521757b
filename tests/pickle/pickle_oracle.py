#!/usr/bin/env python3
"""CPython's pickle module as the oracle for dcp.pickle (tests/pickle/test_pickle_interop.cpp).

    pickle_oracle.py dumps DIR   write DIR/<value>.p<N>.pkl, pickle.dumps(value, protocol=N)
                                 for every value below and N = 2..5, and DIR/values.json
                                 {"<value>.p<N>": <tagged value>}
    pickle_oracle.py loads DIR   for every DIR/<name>.pkl beside DIR/<name>.json (the value its
                                 writer meant, tagged): pickle.loads it and compare; one line
                                 per file ("OK name" or "FAIL name: why"), exit 1 on a FAIL

No torch: only the standard library. The tagged form is plain JSON that a C++ test can build
from a decoded pickle without Python's object model:
  None -> null; bool -> true/false; int -> {"int": "<decimal>"} when it fits int64, else
  {"long": "<hex of pickle.encode_long(n)>"} (LONG1's two's complement bytes); float ->
  {"float": "<hex of the IEEE-754 bits, big-endian>"}; str -> {"str": "<hex of UTF-8,
  surrogatepass>"}; bytes -> {"bytes": "<hex>"}; bytearray -> {"bytearray": "<hex>"};
  complex -> {"complex": [re, im]}; tuple/list -> {"tuple"|"list": [items]}; set/frozenset ->
  {"set"|"frozenset": [items sorted by their compact tagged JSON text]}; dict/OrderedDict ->
  {"dict"|"odict": [[k, v], ...]};
  slice -> {"slice": [start, stop, step]}; an argparse.Namespace (a stand-in for DCP's
  dataclasses: NEWOBJ + BUILD with an attribute dict) -> {"object": "argparse.Namespace",
  "state": <its __dict__ as a dict>}; a persistent id -> {"persistent": <the id>}.
"""

import argparse
import collections
import json
import os
import pickle
import struct
import sys


class Persistent:
    def __init__(self, pid):
        self.pid = pid


def _compact(tagged):
    return json.dumps(tagged, sort_keys=True, separators=(",", ":"))


def tag(v):
    t = type(v)
    if v is None or t is bool:
        return v
    if t is int:
        return {"int": str(v)} if -2**63 <= v < 2**63 else {"long": pickle.encode_long(v).hex()}
    if t is float:
        return {"float": struct.pack(">d", v).hex()}
    if t is str:
        return {"str": v.encode("utf-8", "surrogatepass").hex()}
    if t is bytes:
        return {"bytes": v.hex()}
    if t is bytearray:
        return {"bytearray": bytes(v).hex()}
    if t is complex:
        return {"complex": [tag(v.real), tag(v.imag)]}
    if t in (tuple, list):
        return {t.__name__: [tag(x) for x in v]}
    if t in (set, frozenset):  # iteration order depends on the process's hash seed
        return {t.__name__: sorted((tag(x) for x in v), key=_compact)}
    if t is dict:
        return {"dict": [[tag(k), tag(x)] for k, x in v.items()]}
    if t is collections.OrderedDict:
        return {"odict": [[tag(k), tag(x)] for k, x in v.items()]}
    if t is slice:
        return {"slice": [tag(v.start), tag(v.stop), tag(v.step)]}
    if t is argparse.Namespace:
        return {"object": "argparse.Namespace", "state": tag(vars(v))}
    if t is Persistent:
        return {"persistent": tag(v.pid)}
    raise TypeError("no tagged form for %s" % t.__name__)


def values():
    """The values a DCP reader must decode: what .metadata, torch.save's data.pkl and BYTE_IO
    objects hold (dcp.record's object allow-list), spelled by CPython at every protocol."""
    shared = ["shared", 1]
    many = ["s%03d" % i for i in range(300)]  # > 256 memo entries: LONG_BINPUT/LONG_BINGET
    return {
        "none": None, "true": True, "false": False,
        "ints": [0, 1, 255, 256, 65535, 65536, -1, -256, 2**31 - 1, -2**31, 2**31, 2**63 - 1,
                 -2**63],
        "longs": [2**63, -2**63 - 1, 2**64, 2**200, -(2**521)],
        "long4": 2**2100,  # encode_long > 255 bytes: LONG4
        "floats": [0.0, -0.0, 1.5, -2.25e-308, 5e-324, float("inf"), float("-inf"),
                   1.7976931348623157e308, 0.1],
        "nan": float("nan"),
        "strs": ["", "a", "héllo ✓ 🚀", "x" * 300, "nul\x00inside", "\udc80"],
        "bytes": [b"", b"\x00\x01\xff", bytes(range(256)), b"y" * 300],
        "bytearray": bytearray(b"\x00ab\xff"),
        "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), tuple(range(10))],
        "list": [1, "two", 3.0, None, [4, [5]]],
        "big_list": list(range(2500)),       # APPENDS in batches of 1000
        "dict": {"a": 1, "b": [2, 3], 7: "seven", (1, 2): None},
        "big_dict": {"k%d" % i: i for i in range(2500)},  # SETITEMS in batches
        "set": {1, 2, 3}, "frozenset": frozenset(["x", "y"]), "empty_set": set(),
        "complex": complex(1.5, -2.0),
        "odict": collections.OrderedDict([("z", 1), ("a", [2])]),
        "slice": slice(1, None, 2),
        "memo": (shared, shared, many, many),
        "namespace": argparse.Namespace(fqn="layer.weight", offset=(0, 4), index=None),
        "nested": {"optim": {"param_groups": [{"lr": 0.001, "betas": (0.9, 0.999),
                                               "params": ["a.w", "a.b"]}]}},
    }


def dumps(out):
    os.makedirs(out, exist_ok=True)
    expected = {}
    for name, v in values().items():
        for protocol in (2, 3, 4, 5):
            key = "%s.p%d" % (name, protocol)
            with open(os.path.join(out, key + ".pkl"), "wb") as f:
                f.write(pickle.dumps(v, protocol=protocol))
            t = tag(v)
            if protocol == 5 and type(v) is bytearray:
                # BYTEARRAY8 is read into a bytes node: dcp.pickle's Document has no bytearray.
                t = {"bytes": bytes(v).hex()}
            expected[key] = t
    with open(os.path.join(out, "values.json"), "w") as f:
        json.dump(expected, f)
    return 0


class _Unpickler(pickle.Unpickler):
    ALLOWED = {("_codecs", "encode"), ("collections", "OrderedDict"),
               ("argparse", "Namespace")} | {
        ("builtins", n) for n in ("set", "frozenset", "bytes", "bytearray", "complex", "slice")}

    def find_class(self, module, name):
        # Below protocol 3 the base class maps __builtin__ to builtins (fix_imports); above,
        # it must fail to import __builtin__, as for any other unpickler.
        if (module if module != "__builtin__" else "builtins", name) not in self.ALLOWED:
            raise pickle.UnpicklingError("global %s.%s is not expected here" % (module, name))
        return super().find_class(module, name)

    def persistent_load(self, pid):
        return Persistent(pid)


def loads(directory):
    failed = 0
    names = sorted(n[:-4] for n in os.listdir(directory) if n.endswith(".pkl"))
    for name in names:
        want_file = os.path.join(directory, name + ".json")
        if not os.path.exists(want_file):
            continue
        with open(want_file) as f:
            want = json.load(f)
        try:
            with open(os.path.join(directory, name + ".pkl"), "rb") as f:
                got = tag(_Unpickler(f).load())
            if got != want:
                raise ValueError("loaded %s, meant %s" % (json.dumps(got)[:300],
                                                          json.dumps(want)[:300]))
            print("OK %s" % name)
        except Exception as e:  # noqa: BLE001 - every failure is one FAIL line
            failed += 1
            print("FAIL %s: %s: %s" % (name, type(e).__name__, e))
    return 1 if failed else 0


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("dumps", "loads"):
        print(__doc__, file=sys.stderr)
        return 2
    return dumps(sys.argv[2]) if sys.argv[1] == "dumps" else loads(sys.argv[2])


if __name__ == "__main__":
    sys.exit(main())
