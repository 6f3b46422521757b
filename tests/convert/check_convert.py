#!/usr/bin/python3
"""Check a file written by `dcpp convert` against a case's expected.json (tests/convert).

    check_convert.py pt CASE_DIR FILE.pt [--keys REGEX]
    check_convert.py safetensors CASE_DIR FILE.safetensors [--keys REGEX]
    check_convert.py same-as-torch-save FILE.pt [--whole-file]

CASE_DIR is a make_checkpoint.py output or a shared/fixtures/torch2x case: expected.json plus
expected/*.bin. Only keys matching REGEX (re.search) are expected, all others must be absent.

pt: torch.load(FILE) with real PyTorch; every expected tensor sits at its "path" (dict keys,
list indices) with the expected dtype, shape and bytes, contiguous, requires_grad False; every
object has the expected repr and JSON; nothing else is there but None holes in lists.

safetensors: parsed by hand (u64 little-endian header size, JSON header padded with spaces
to a multiple of 8, data area): dtype codes, shapes, data_offsets packed back to back in key
order and covering the data area exactly, bytes equal to expected/*.bin, "__metadata__" =
{"format": "pt", <object key>: <its JSON as a string>}.

same-as-torch-save: torch.save(torch.load(FILE)) to a stream gives the same data.pkl bytes
(and, with --whole-file, the same file).

Prints one line; exit 0 when everything matches, 1 otherwise.
"""

import argparse
import io
import json
import os
import re
import struct
import sys
import zipfile

ST_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
             "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
             "bool": "BOOL"}


class Mismatch(Exception):
    pass


def load_case(case_dir, keys):
    with open(os.path.join(case_dir, "expected.json"), encoding="utf-8") as f:
        exp = json.load(f)
    sel = re.compile(keys) if keys else None
    keep = (lambda k: sel.search(k) is not None) if sel else (lambda k: True)
    tensors = {k: v for k, v in exp["tensors"].items() if keep(k)}
    objects = {k: v for k, v in exp["objects"].items() if keep(k)}
    return tensors, objects


def expected_bytes(case_dir, entry):
    with open(os.path.join(case_dir, entry["file"]), "rb") as f:
        return f.read()


def path_of(key, entry):
    return tuple(entry.get("path") or [key])


def check_pt(case_dir, pt, keys):
    import torch
    tensors, objects = load_case(case_dir, keys)
    got = torch.load(pt, map_location="cpu")
    leaves = {}
    for key, entry in list(tensors.items()) + list(objects.items()):
        node = got
        path = path_of(key, entry)
        for part in path:
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise Mismatch("%r: no list element %d at %r" % (key, part, path))
            elif not isinstance(node, dict) or part not in node:
                raise Mismatch("%r: no dict key %r at %r" % (key, part, path))
            node = node[part]
        leaves[path] = key
        if key in tensors:
            if not isinstance(node, torch.Tensor):
                raise Mismatch("%r: expected a tensor, got %s" % (key, type(node).__name__))
            if str(node.dtype) != "torch." + entry["dtype"] or list(node.shape) != entry["shape"]:
                raise Mismatch("%r: expected %s %s, got %s %s" % (
                    key, entry["dtype"], entry["shape"], node.dtype, list(node.shape)))
            if not node.is_contiguous() or node.requires_grad or node.storage_offset() != 0:
                raise Mismatch("%r: not a plain contiguous tensor" % key)
            t = node.view(torch.int16) if node.dtype == torch.bfloat16 else node
            if t.numpy().tobytes() != expected_bytes(case_dir, entry):
                raise Mismatch("%r: tensor bytes differ" % key)
        else:
            if repr(node) != entry["repr"]:
                raise Mismatch("%r: expected %s, got %r" % (key, entry["repr"], node))
            if json.loads(json.dumps(node)) != entry["json"]:
                raise Mismatch("%r: JSON form differs" % key)

    def walk(node, path):
        if path in leaves:
            return
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (k,))
        elif isinstance(node, list) and path:
            for i, v in enumerate(node):
                walk(v, path + (i,))
        elif node is None and path and isinstance(path[-1], int):
            return  # a hole in a list
        else:
            raise Mismatch("unexpected %s at %r" % (type(node).__name__, path))

    if not isinstance(got, dict):
        raise Mismatch("file holds %s, not a dict" % type(got).__name__)
    walk(got, ())
    return "%d tensors and %d objects match" % (len(tensors), len(objects))


def check_safetensors(case_dir, path, keys):
    tensors, objects = load_case(case_dir, keys)
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise Mismatch("file shorter than 8 bytes")
    (n,) = struct.unpack("<Q", blob[:8])
    if n % 8 or 8 + n > len(blob):
        raise Mismatch("header size %d: not a multiple of 8 or past the end" % n)
    text = blob[8:8 + n].decode("utf-8")
    if not text.startswith("{") or text.rstrip(" ") != text.rstrip():
        raise Mismatch("header must start with '{' and be padded with spaces only")
    header = json.loads(text)
    data = blob[8 + n:]
    meta = header.pop("__metadata__", None)
    want_meta = {"format": "pt"}
    want_meta.update({k: v["json"] for k, v in objects.items()})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise Mismatch("__metadata__ must map strings to strings")
    got_meta = {k: (v if k == "format" else json.loads(v)) for k, v in meta.items()}
    if got_meta != want_meta:
        raise Mismatch("__metadata__ differs: %r" % sorted(set(got_meta) ^ set(want_meta)))
    if set(header) != set(tensors):
        raise Mismatch("tensor keys differ: missing %r, extra %r" % (
            sorted(set(tensors) - set(header))[:5], sorted(set(header) - set(tensors))[:5]))
    end = 0
    for key in sorted(header, key=lambda k: k.encode("utf-8", "surrogatepass")):
        entry, got = tensors[key], header[key]
        if got.get("dtype") != ST_DTYPES.get(entry["dtype"]) or got.get("shape") != entry["shape"]:
            raise Mismatch("%r: expected %s %s, got %s %s" % (
                key, entry["dtype"], entry["shape"], got.get("dtype"), got.get("shape")))
        begin, stop = got["data_offsets"]
        if begin != end:
            raise Mismatch("%r: data starts at %d, expected %d (key order, packed)" % (key, begin, end))
        if data[begin:stop] != expected_bytes(case_dir, entry) or stop - begin != entry["nbytes"]:
            raise Mismatch("%r: tensor bytes differ" % key)
        end = stop
    if end != len(data):
        raise Mismatch("data area has %d bytes, tensors cover %d" % (len(data), end))
    return "%d tensors and %d objects match" % (len(tensors), len(objects))


def check_same_as_torch_save(pt, whole):
    import torch
    with open(pt, "rb") as f:
        ours = f.read()
    buf = io.BytesIO()
    torch.save(torch.load(io.BytesIO(ours)), buf)
    theirs = buf.getvalue()
    a = zipfile.ZipFile(io.BytesIO(ours)).read("archive/data.pkl")
    b = zipfile.ZipFile(io.BytesIO(theirs)).read("archive/data.pkl")
    if a != b:
        i = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
        raise Mismatch("data.pkl differs from torch.save's at byte %d (%d vs %d bytes)" % (i, len(a), len(b)))
    if whole and ours != theirs:
        raise Mismatch("file differs from torch.save's (%d vs %d bytes)" % (len(ours), len(theirs)))
    return "data.pkl%s identical to torch.save's" % (" and file" if whole else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["pt", "safetensors", "same-as-torch-save"])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--keys")
    ap.add_argument("--whole-file", action="store_true")
    args = ap.parse_args()
    try:
        if args.mode == "pt":
            msg = check_pt(args.paths[0], args.paths[1], args.keys)
        elif args.mode == "safetensors":
            msg = check_safetensors(args.paths[0], args.paths[1], args.keys)
        else:
            msg = check_same_as_torch_save(args.paths[0], args.whole_file)
    except Mismatch as e:
        print("check_convert: FAIL: %s" % e)
        return 1
    print("check_convert: OK: %s" % msg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
