#!/usr/bin/python3
"""Cross-check a generated case directory: DIR/ckpt + DIR/expected.json + DIR/expected/*.bin.

    /usr/bin/python3 tests/python/check_expected.py DIR [DIR ...] [-v]

Independently of make_checkpoint.py's own checks, for every case directory:
  * the top-level keys are exactly the expected.json schema keys (tests/python/README.md);
  * the tensor/object keys are exactly the keys of .metadata (read with torch 1.13);
  * each .bin has nbytes bytes and the recorded sha256 (skipped when "file" is null);
  * chunks lie inside the tensor, do not overlap and cover it exactly;
  * each item's byte range lies inside its file and is a complete zip archive (the end of
    central directory record ends exactly at the end of the range);
  * torch.load of each tensor item's bytes gives a tensor of the chunk's size and dtype whose
    values are bit-identical to that region of the .bin; torch.load of each object item gives
    the recorded value (json and repr).
Prints one line per directory with -v, nothing otherwise; exits 1 on the first failure.
"""

import argparse
import hashlib
import io
import json
import math
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dcp113  # noqa: E402
from dcp113 import torch  # noqa: E402

TOP_KEYS = {"schema", "case", "description", "format_followed", "world_size",
            "metadata_version", "checkpoint_id", "save_id", "tensors", "objects",
            "format", "planner_data"}
DTYPES = {v: k for k, v in dcp113.DTYPE_NAMES.items()}


class Bad(Exception):
    pass


def _zip_check(blob, where):
    if len(blob) < 22 or blob[-22:-18] != b"PK\x05\x06":
        raise Bad("%s: no end-of-central-directory record at the end of the item" % where)
    if blob[:4] != b"PK\x03\x04":
        raise Bad("%s: item does not start with a zip local header" % where)


def _full_from_bin(entry, case_dir):
    dtype = DTYPES[entry["dtype"]]
    data = open(os.path.join(case_dir, entry["file"]), "rb").read()
    if len(data) != entry["nbytes"]:
        raise Bad("%s: %d bytes, nbytes says %d" % (entry["file"], len(data), entry["nbytes"]))
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise Bad("%s: sha256 mismatch" % entry["file"])
    view = torch.bfloat16 if dtype == torch.bfloat16 else dtype
    if not data:
        return torch.empty(entry["shape"], dtype=dtype)
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return raw.view(view).reshape(entry["shape"])


def check_case(case_dir, verbose=False):
    doc = json.load(open(os.path.join(case_dir, "expected.json"), encoding="utf-8"))
    if set(doc) != TOP_KEYS:
        raise Bad("top-level keys %r" % sorted(set(doc) ^ TOP_KEYS))
    if doc["schema"] != 1 or doc["format"] != "torch-1.13" or doc["planner_data"] is not None:
        raise Bad("schema/format/planner_data: %r %r %r" % (doc["schema"], doc["format"],
                                                           doc["planner_data"]))
    ckpt = os.path.join(case_dir, "ckpt")
    md = dcp113.read_metadata(ckpt)
    keys = list(doc["tensors"]) + list(doc["objects"])
    if sorted(keys) != sorted(md.state_dict_metadata):
        raise Bad("keys differ from .metadata")
    if len(set(keys)) != len(keys):
        raise Bad("a key is both a tensor and an object")
    files = {}

    def item(fqn, c):
        f = c["file"]
        if f not in files:
            files[f] = open(os.path.join(ckpt, f), "rb").read()
        blob = files[f]
        lo, n = c["byte_offset"], c["byte_length"]
        if lo < 0 or n <= 0 or lo + n > len(blob):
            raise Bad("%r: range %d+%d outside %s (%d bytes)" % (fqn, lo, n, f, len(blob)))
        data = blob[lo:lo + n]
        _zip_check(data, "%r %s@%d" % (fqn, f, lo))
        return data

    n_chunks = 0
    strides = {}
    for fqn, e in doc["tensors"].items():
        if e["path"] != [fqn]:
            raise Bad("%r: path %r" % (fqn, e["path"]))
        dtype = DTYPES[e["dtype"]]
        shape = e["shape"]
        if e["nbytes"] != math.prod(shape) * torch.empty((), dtype=dtype).element_size():
            raise Bad("%r: nbytes" % fqn)
        full = _full_from_bin(e, case_dir) if e["file"] is not None else None
        covered = torch.zeros(shape, dtype=torch.int32) if math.prod(shape) < 2**26 else None
        volume = 0
        for c in e["chunks"]:
            off, sz = c["offsets"], c["sizes"]
            if (fqn, tuple(off)) not in strides:
                n_chunks += 1  # identical zero-size chunks share one storage_data entry
            if len(off) != len(shape) or len(sz) != len(shape):
                raise Bad("%r: chunk rank" % fqn)
            if any(o < 0 or s < 0 or o + s > d for o, s, d in zip(off, sz, shape)):
                raise Bad("%r: chunk %r+%r outside %r" % (fqn, off, sz, shape))
            volume += math.prod(sz)
            region = tuple(slice(o, o + s) for o, s in zip(off, sz))
            if covered is not None:
                covered[region] += 1
            t = torch.load(io.BytesIO(item(fqn, c)), map_location="cpu")
            strides[(fqn, tuple(off))] = t.stride()
            if t.dtype != dtype or list(t.shape) != sz:
                raise Bad("%r: item holds %s %r, chunk says %s %r" % (
                    fqn, t.dtype, list(t.shape), dtype, sz))
            if full is not None:
                want = full[region] if shape else full
                if dcp113.tensor_bytes(t) != dcp113.tensor_bytes(want):
                    raise Bad("%r: chunk %r differs from expected bytes" % (fqn, off))
        if volume != math.prod(shape):
            raise Bad("%r: chunk volumes sum to %d, numel %d" % (fqn, volume, math.prod(shape)))
        if covered is not None and covered.numel() and not bool((covered == 1).all()):
            raise Bad("%r: chunks overlap or leave holes" % fqn)
    for fqn, o in doc["objects"].items():
        if o["path"] != [fqn] or len(o["storage"]) != 1 or o["storage"][0]["offsets"] is not None:
            raise Bad("%r: object entry shape" % fqn)
        v = torch.load(io.BytesIO(item(fqn, o["storage"][0])))
        if repr(v) != o["repr"] or dcp113.to_json(v) != o["json"] or \
                dcp113.py_type(v) != o["py_type"]:
            raise Bad("%r: stored %r, expected.json says %s" % (fqn, v, o["repr"]))
        n_chunks += 1
    if n_chunks != len(md.storage_data):
        raise Bad("%d items described, storage_data has %d" % (n_chunks, len(md.storage_data)))
    if verbose:
        odd = {k: s for k, s in strides.items()
               if s != tuple(torch.empty(doc["tensors"][k[0]]["chunks"][0]["sizes"]).stride())}
        print("%s: OK, %d tensors, %d objects, %d items, %d files; non-row-major strides: %r" % (
            doc["case"], len(doc["tensors"]), len(doc["objects"]), n_chunks, len(files), odd))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    for d in args.dirs:
        try:
            check_case(d, args.verbose)
        except (Bad, OSError, KeyError, ValueError, RuntimeError) as e:
            print("check_expected.py: %s: %s" % (d, e), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
