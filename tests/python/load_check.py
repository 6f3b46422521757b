#!/usr/bin/python3
"""Check a torch.save file written by dcpp's converter against PyTorch 1.13's own DCP load.

    /usr/bin/python3 tests/python/load_check.py CKPT_DIR PT_FILE [--layout auto|flat|nested]

Loads CKPT_DIR with torch.distributed._shard.checkpoint.load_state_dict(no_dist=True) into
full-shape tensors (and BYTE_IO values as torch.load returns them), torch.load()s PT_FILE, and
checks that both hold the same keys and values:
  * tensors: same dtype and shape and bit-identical contents (torch.equal, except that NaNs
    with equal bit patterns compare equal and -0.0 differs from 0.0);
  * other values: equal with the same Python types (a tuple is not a list, True is not 1),
    recursively; tensors nested inside them are compared as tensors.
Layout of PT_FILE: `flat` = {fqn: value} (what a 1.13 checkpoint, planner_data None, maps to);
`nested` = the fqns expanded along .metadata's planner_data paths (2.x checkpoints: str parts
are dict keys, int parts list indices); `auto` (default) = nested when planner_data is a dict,
else flat.

A torch 2.x `.metadata` (torch.distributed.checkpoint.* classes) is read by mapping its classes
onto the 1.13 ones, so 2.x checkpoints can be checked with torch 1.13 too (the tests check
2.x conversions with torch 2.13 itself: tests/convert/check_convert.py).

Prints one line and exits 0 when everything matches, 1 otherwise (the line says why).
"""

import argparse
import dataclasses
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dcp113  # noqa: E402
from dcp113 import dcp, torch  # noqa: E402

_M113 = "torch.distributed._shard.checkpoint.metadata"
_ST113 = "torch.distributed._shard.sharded_tensor.metadata"
_FS113 = "torch.distributed._shard.checkpoint.filesystem"


@dataclasses.dataclass
class StorageMeta:  # stand-in for torch 2.4+'s StorageMeta (informational only)
    checkpoint_id: object = None
    save_id: object = None
    load_id: object = None
    modules: object = None


class _CompatUnpickler(pickle.Unpickler):
    """Reads 1.13 and 2.x .metadata by mapping 2.x class paths onto torch 1.13's classes."""

    MAP = {
        ("torch.distributed.checkpoint.metadata", "TensorProperties"): (_ST113, "TensorProperties"),
        ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"):
            (_ST113, "MEM_FORMAT_ENCODING"),
        ("torch.distributed.checkpoint.metadata", "MEM_FORMAT_ENCODING"):
            (_ST113, "MEM_FORMAT_ENCODING"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): (_FS113, "_StorageInfo"),
    }

    def find_class(self, module, name):
        if (module, name) in self.MAP:
            module, name = self.MAP[(module, name)]
        elif module == "torch.distributed.checkpoint.metadata":
            if name == "StorageMeta":
                return StorageMeta
            module = _M113
        return super().find_class(module, name)


class _CompatReader(dcp.FileSystemReader):
    def read_metadata(self):
        with (self.path / ".metadata").open("rb") as f:
            return _CompatUnpickler(f).load()


class Mismatch(Exception):
    pass


def dcp_load(ckpt):
    reader = _CompatReader(str(ckpt))
    md = reader.read_metadata()
    return md, dcp113.load_full(ckpt, md, reader)


def unflatten(flat, planner_data):
    root = {}
    for fqn, value in flat.items():
        path = planner_data.get(fqn)
        if path is None:
            raise Mismatch("planner_data has no path for %r" % fqn)
        node = root
        for i, part in enumerate(path):
            last = i + 1 == len(path)
            nxt = value if last else ([] if isinstance(path[i + 1], int) else {})
            if isinstance(node, list):
                if not isinstance(part, int):
                    raise Mismatch("path %r: str part %r under a list" % (path, part))
                while len(node) <= part:
                    node.append(None)
                if last or node[part] is None:
                    node[part] = nxt
                node = node[part]
            else:
                if last or part not in node:
                    node[part] = nxt
                node = node[part]
    return root


def _where(path):
    return "".join("[%r]" % p for p in path) or "<root>"


def compare(want, got, path=()):
    if isinstance(want, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            raise Mismatch("%s: expected a tensor, .pt has %s" % (_where(path), type(got).__name__))
        if got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape):
            raise Mismatch("%s: expected %s %s, .pt has %s %s" % (
                _where(path), want.dtype, tuple(want.shape), got.dtype, tuple(got.shape)))
        if got.layout != torch.strided or got.is_quantized:
            raise Mismatch("%s: .pt tensor is not a plain strided tensor" % _where(path))
        if dcp113.tensor_bytes(want) != dcp113.tensor_bytes(got):
            diff = (want.detach().contiguous().view(-1).view(torch.uint8)
                    != got.detach().contiguous().view(-1).view(torch.uint8)).nonzero()
            first = int(diff[0]) // want.element_size() if diff.numel() else -1
            raise Mismatch("%s: values differ (first differing element %d of %d)" % (
                _where(path), first, want.numel()))
        return 1, 0
    if type(want) is not type(got):
        raise Mismatch("%s: expected %s, .pt has %s" % (
            _where(path), type(want).__name__, type(got).__name__))
    if isinstance(want, dict):
        if set(want) != set(got):
            missing = [k for k in want if k not in got]
            extra = [k for k in got if k not in want]
            raise Mismatch("%s: keys differ: missing %r, extra %r" % (
                _where(path), missing[:5], extra[:5]))
        n = (0, 0)
        for k in want:
            t, o = compare(want[k], got[k], path + (k,))
            n = (n[0] + t, n[1] + o)
        return n
    if isinstance(want, (list, tuple)):
        if len(want) != len(got):
            raise Mismatch("%s: length %d, .pt has %d" % (_where(path), len(want), len(got)))
        n = (0, 0)
        for i, (a, b) in enumerate(zip(want, got)):
            t, o = compare(a, b, path + (i,))
            n = (n[0] + t, n[1] + o)
        return n
    if want != got and not (want != want and got != got):  # NaN == NaN here
        raise Mismatch("%s: expected %r, .pt has %r" % (_where(path), want, got))
    return 0, 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print("load_check: usage error: %s" % message)
        sys.exit(1)


def main(argv=None):
    ap = _Parser(description="compare a converter's torch.save output with DCP load")
    ap.add_argument("ckpt")
    ap.add_argument("pt")
    ap.add_argument("--layout", choices=["auto", "flat", "nested"], default="auto")
    args = ap.parse_args(argv)
    try:
        md, flat = dcp_load(args.ckpt)
    except Exception as e:  # noqa: BLE001 - any failure of the reference load is reported
        print("load_check: FAIL: PyTorch could not load %s: %s: %s" % (
            args.ckpt, type(e).__name__, str(e).splitlines()[0] if str(e) else ""))
        return 1
    try:
        got = torch.load(args.pt, map_location="cpu")
    except Exception as e:  # noqa: BLE001
        print("load_check: FAIL: torch.load(%s): %s: %s" % (
            args.pt, type(e).__name__, str(e).splitlines()[0] if str(e) else ""))
        return 1
    layout = args.layout
    if layout == "auto":
        layout = "nested" if isinstance(md.planner_data, dict) else "flat"
    try:
        if layout == "nested":
            if not isinstance(md.planner_data, dict):
                raise Mismatch("--layout nested needs a planner_data dict in .metadata")
            want = unflatten(flat, md.planner_data)
        else:
            want = flat
        if not isinstance(got, dict):
            raise Mismatch(".pt holds %s, expected a dict" % type(got).__name__)
        n_t, n_o = compare(want, got)
    except Mismatch as e:
        print("load_check: FAIL: %s" % e)
        return 1
    print("load_check: OK: %d tensors and %d non-tensor leaves identical (%d keys, layout %s)" % (
        n_t, n_o, len(flat), layout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
