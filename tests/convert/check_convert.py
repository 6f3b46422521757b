#!/usr/bin/env python3
"""Check a file written by `dcpp convert` against a case's expected.json (tests/convert).

    check_convert.py pt CASE_DIR FILE.pt [--keys REGEX]
    check_convert.py safetensors CASE_DIR FILE.safetensors [--keys REGEX]
    check_convert.py same-as-torch-save FILE.pt [--whole-file]
    check_convert.py batch JOBS.json        (a JSON list of argument lists; one line each)

Run pt and safetensors with the torch 2.13 virtualenv (.venv/bin/python: torch and the
safetensors library); same-as-torch-save with the torch whose torch.save is the reference.
CASE_DIR is a make_checkpoint.py or make_checkpoint2x.py output: expected.json plus
expected/*.bin. Only keys matching REGEX (re.search) are expected, all others must be absent.

pt: torch.load(FILE) (weights_only=True, torch's default; where it refuses, torch.save of the
same values must be refused too, then weights_only=False);
every expected tensor sits at its "path" (dict keys, list indices) with the expected dtype,
shape and bytes, contiguous, requires_grad False; every object has the expected repr and
JSON; nothing else is there but None holes in lists.

safetensors: read by the safetensors library (safetensors.torch.load_file for the tensors,
safe_open for the key list and the metadata): exactly the expected keys, each with the
expected dtype, shape and bytes; metadata = {"format": "pt", <object key>: <its JSON as a
string>}.

same-as-torch-save: torch.save(torch.load(FILE)) to a stream gives the same data.pkl bytes
(and, with --whole-file, the same file).

Prints one line; exit 0 when everything matches, 1 otherwise.
"""

import argparse
import io
import json
import os
import re
import sys
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from expected_common import to_json  # noqa: E402

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


def tensor_bytes(t):
    """Row-major little-endian bytes of any tensor (the layout of expected/*.bin)."""
    import torch
    return t.detach().clone(memory_format=torch.contiguous_format).reshape(-1) \
        .view(torch.uint8).numpy().tobytes()


def load_pt(torch, pt):
    """torch.load with torch's default, weights_only=True. Where that refuses the file, the
    values must be ones that torch's own torch.save file of them is refused for too (an empty
    bytes object pickles as GLOBAL __builtin__.bytes, outside the weights_only allow-list)."""
    import pickle
    try:
        return torch.load(pt, map_location="cpu")
    except pickle.UnpicklingError as e:
        refused = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
    got = torch.load(pt, map_location="cpu", weights_only=False)
    buf = io.BytesIO()
    torch.save(got, buf)
    buf.seek(0)
    try:
        torch.load(buf, map_location="cpu")
    except pickle.UnpicklingError:
        return got
    raise Mismatch("torch.load(weights_only=True) refuses the file (%s) but accepts torch.save "
                   "of the same values" % refused)


def path_of(key, entry):
    return tuple(entry.get("path") or [key])


def check_pt(case_dir, pt, keys):
    import torch
    tensors, objects = load_case(case_dir, keys)
    got = load_pt(torch, pt)
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
            if tensor_bytes(node) != expected_bytes(case_dir, entry):
                raise Mismatch("%r: tensor bytes differ" % key)
        else:
            if repr(node) != entry["repr"]:
                raise Mismatch("%r: expected %s, got %r" % (key, entry["repr"], node))
            if to_json(node) != entry["json"]:
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
    from safetensors import safe_open
    from safetensors.torch import load_file
    tensors, objects = load_case(case_dir, keys)
    got = load_file(path)
    with safe_open(path, framework="pt") as f:
        names = list(f.keys())
        meta = f.metadata()
    if set(names) != set(got) or set(got) != set(tensors):
        raise Mismatch("tensor keys differ: missing %r, extra %r" % (
            sorted(set(tensors) - set(got))[:5], sorted(set(got) - set(tensors))[:5]))
    want_meta = {"format": "pt"}
    want_meta.update({k: v["json"] for k, v in objects.items()})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise Mismatch("metadata must map strings to strings: %r" % (meta,))
    got_meta = {k: (v if k == "format" else json.loads(v)) for k, v in meta.items()}
    if got_meta != want_meta:
        raise Mismatch("metadata differs: %r" % sorted(set(got_meta) ^ set(want_meta)))
    for key, entry in tensors.items():
        t = got[key]
        if str(t.dtype) != "torch." + entry["dtype"] or list(t.shape) != entry["shape"]:
            raise Mismatch("%r: expected %s %s, got %s %s" % (
                key, entry["dtype"], entry["shape"], t.dtype, list(t.shape)))
        if tensor_bytes(t) != expected_bytes(case_dir, entry):
            raise Mismatch("%r: tensor bytes differ" % key)
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


def run(argv):
    """One check; returns the line to print (starting with "check_convert: OK" or ": FAIL")."""
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["pt", "safetensors", "same-as-torch-save"])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--keys")
    ap.add_argument("--whole-file", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.mode == "pt":
            msg = check_pt(args.paths[0], args.paths[1], args.keys)
        elif args.mode == "safetensors":
            msg = check_safetensors(args.paths[0], args.paths[1], args.keys)
        else:
            msg = check_same_as_torch_save(args.paths[0], args.whole_file)
    except Mismatch as e:
        return "check_convert: FAIL: %s" % e
    except Exception as e:  # noqa: BLE001 - a reader that throws is a failed check
        return "check_convert: FAIL: %s: %s" % (type(e).__name__, " ".join(str(e).split())[:500])
    return "check_convert: OK: %s" % msg


def main():
    if sys.argv[1:2] == ["batch"]:
        # batch JOBS.json: a JSON list of argument lists, one check each, in one interpreter
        # (torch's import costs seconds); one line per job, in order.
        with open(sys.argv[2], encoding="utf-8") as f:
            jobs = json.load(f)
        lines = [run(job) for job in jobs]
        print("\n".join(lines))
        return 0 if all(": OK: " in line for line in lines) else 1
    line = run(sys.argv[1:])
    print(line)
    return 0 if ": OK: " in line else 1


if __name__ == "__main__":
    sys.exit(main())
