#!/usr/bin/env python3
"""torch 2.13's side of the dcp.save suite (tests/save): loads checkpoints that dcpp wrote and
compares every value bit for bit with what the C++ test says was saved; writes the torch
checkpoints of the round-trip test and compares a dcpp copy with torch's original.

Usage (the repository's virtualenv, .venv/bin/python):

    save_check.py load MANIFEST         every check of MANIFEST, one process, no process group
    save_check.py dist MANIFEST         the "dist" runs of MANIFEST: W Gloo ranks each
    save_check.py torch_save OUT_DIR    a torch 2.13 checkpoint of many kinds of values
    save_check.py compare ORIG COPY     COPY must load to exactly what ORIG loads to

MANIFEST (written by tests/save at test time):

    {"checks": [{"name": "...", "ckpt": "DIR", "exact_keys": true,
                 "tensors": [{"path": ["a", 0, "b"], "dtype": "float32", "shape": [2, 3],
                              "bin": "FILE"}],
                 "objects": [{"path": [...], "literal": "Python literal"}]}],
     "dist": [{"name": "...", "ckpt": "DIR", "world": 4, "tensors": [...], "objects": [...]}]}

`bin` holds the tensor's row-major little-endian bytes (written by the C++ test, not by dcpp);
`literal` is the object as a Python literal (ast.literal_eval; tuples stay tuples). Tensors are
compared as byte views with torch.equal (NaN payloads and -0.0 count), after checking dtype and
shape; objects by value and exact Python type. `exact_keys`: the checkpoint's keys and
planner_data paths must be exactly those listed.

In `dist`, every rank loads each tensor with at least one dim into a DTensor Shard(0) over a
W-rank mesh (0-dim tensors and objects as plain values) and checks its own slice against
torch.chunk of the expected tensor. Output: one line per check, `ok NAME` or `FAIL NAME:
reason`; exit status 1 when any failed.
"""

import ast
import json
import os
import pickle
import socket
import sys
import traceback
import warnings
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint._traverse import get_element, set_element  # noqa: E402
from torch.distributed.checkpoint.metadata import TensorStorageMetadata  # noqa: E402

import expected_common as common  # noqa: E402
from expected_common import fqn_of, report, same_object  # noqa: E402


def as_bytes(t):
    """The tensor's row-major bytes as a flat uint8 tensor."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def expected_tensor(spec):
    return common.expected_tensor(torch, spec)


def same_tensor(got, want):
    return common.same_tensor(torch, got, want, as_bytes)


def read_metadata(ckpt):
    with open(Path(ckpt) / ".metadata", "rb") as f:
        return pickle.load(f)


def check_keys(check, md):
    want = {fqn_of(t["path"]): tuple(t["path"]) for t in check["tensors"]}
    want.update({fqn_of(o["path"]): tuple(o["path"]) for o in check["objects"]})
    got = set(md.state_dict_metadata)
    if got != set(want):
        return "keys %s, expected %s" % (sorted(got), sorted(want))
    pd = md.planner_data or {}
    for fqn, path in want.items():
        if tuple(pd.get(fqn, ())) != path:
            return "planner_data[%r] = %r, expected %r" % (fqn, pd.get(fqn), path)
    return None


def run_load(check):
    md = read_metadata(check["ckpt"])
    if check.get("exact_keys", True):
        bad = check_keys(check, md)
        if bad:
            return bad
    dest = {}
    wants = []
    for t in check["tensors"]:
        want = expected_tensor(t)
        wants.append((t["path"], want))
        set_element(dest, tuple(t["path"]), torch.zeros(want.shape, dtype=want.dtype) if want.numel()
                    else torch.empty(want.shape, dtype=want.dtype))
    for o in check["objects"]:
        set_element(dest, tuple(o["path"]), None)
    dcp.load(dest, checkpoint_id=check["ckpt"])
    for path, want in wants:
        bad = same_tensor(get_element(dest, tuple(path)), want)
        if bad:
            return "%s: %s" % (fqn_of(path), bad)
    for o in check["objects"]:
        got = get_element(dest, tuple(o["path"]))
        want = ast.literal_eval(o["literal"])
        if not same_object(got, want):
            return "%s: %r, expected %r" % (fqn_of(o["path"]), got, want)
    return None


# --------------------------------------------------------------------------------------
# distributed loads


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_check(check, rank, world, mesh):
    from torch.distributed.tensor import DTensor, Shard
    dest = {}
    wants = []
    for t in check["tensors"]:
        want = expected_tensor(t)
        if want.dim() >= 1:
            # This rank's torch.chunk share (DTensor's Shard(0) layout), made locally: Gloo's
            # scatter in distribute_tensor refuses some dtypes (uint16, complex).
            parts = list(torch.chunk(torch.empty(want.shape[0]), world))
            rows = parts[rank].numel() if rank < len(parts) else 0
            local = torch.zeros((rows,) + tuple(want.shape[1:]), dtype=want.dtype)
            value = DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=want.shape,
                                       stride=torch.empty(want.shape, dtype=torch.uint8).stride())
        else:
            value = torch.zeros(want.shape, dtype=want.dtype)
        wants.append((t["path"], want))
        set_element(dest, tuple(t["path"]), value)
    for o in check["objects"]:
        set_element(dest, tuple(o["path"]), None)
    dcp.load(dest, checkpoint_id=check["ckpt"])
    for path, want in wants:
        got = get_element(dest, tuple(path))
        if want.dim() >= 1:
            local = got.to_local()
            parts = list(torch.chunk(want, world, dim=0))
            mine = parts[rank] if rank < len(parts) else want[want.shape[0]:]
            if want.shape[0] == 0:
                mine = want
            bad = same_tensor(local, mine)
        else:
            bad = same_tensor(got, want)
        if bad:
            return "rank %d: %s: %s" % (rank, fqn_of(path), bad)
    for o in check["objects"]:
        got = get_element(dest, tuple(o["path"]))
        want = ast.literal_eval(o["literal"])
        if not same_object(got, want):
            return "rank %d: %s: %r, expected %r" % (rank, fqn_of(o["path"]), got, want)
    return None


def _rank_main(rank, port, world, checks, results):
    import logging
    from torch.distributed.device_mesh import init_device_mesh
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))
    try:
        mesh = init_device_mesh("cpu", (world,))
        for check in checks:
            try:
                bad = _dist_check(check, rank, world, mesh)
            except Exception:
                bad = "rank %d: exception:\n%s" % (rank, traceback.format_exc())
            results.put((check["name"], rank, bad))
            dist.barrier()
    finally:
        dist.destroy_process_group()


def run_dist(manifest):
    import torch.distributed.device_mesh  # noqa: F401  (inherited by the forked ranks)
    import torch.distributed.tensor  # noqa: F401
    import torch.multiprocessing as mp
    ok = True
    by_world = {}
    for check in manifest.get("dist", []):
        by_world.setdefault(check["world"], []).append(check)
    for world, checks in sorted(by_world.items()):
        ctx = mp.get_context("fork")
        results = ctx.SimpleQueue()
        try:
            mp.start_processes(_rank_main, args=(_free_port(), world, checks, results), nprocs=world,
                               join=True, start_method="fork")
        except Exception as e:  # a rank died: report every check of this world as failed
            for check in checks:
                print("FAIL %s: ranks failed: %s" % (check["name"], e), flush=True)
            ok = False
            continue
        got = {}
        while not results.empty():
            name, rank, bad = results.get()
            got.setdefault(name, []).append((rank, bad))
        for check in checks:
            ranks = got.get(check["name"], [])
            bads = [b for _, b in ranks if b]
            if len(ranks) != world:
                bads.append("%d of %d ranks reported" % (len(ranks), world))
            if bads:
                ok = False
                print("FAIL %s: %s" % (check["name"], "; ".join(bads)), flush=True)
            else:
                print("ok %s (%d ranks)" % (check["name"], world), flush=True)
    return ok


# --------------------------------------------------------------------------------------
# round trip: torch → dcpp → torch


def torch_state():
    g = torch.Generator()
    g.manual_seed(1234)

    def raw(dtype, *shape):
        n = torch.empty(shape, dtype=dtype).numel() * torch.empty((), dtype=dtype).element_size()
        b = torch.randint(0, 256, (n,), generator=g, dtype=torch.int64).to(torch.uint8)
        return b.view(dtype).reshape(shape)

    return {
        "model": {"w": raw(torch.float32, 5, 7), "b": raw(torch.bfloat16, 7),
                  "h": raw(torch.float16, 3, 2, 2), "d": raw(torch.float64, 4),
                  "t": raw(torch.float32, 6, 4).t()},  # a transposed view
        "ints": {"i8": raw(torch.int8, 9), "u8": raw(torch.uint8, 3, 3), "i16": raw(torch.int16, 2),
                 "i32": raw(torch.int32, 8), "i64": raw(torch.int64, 2, 2), "u16": raw(torch.uint16, 5),
                 "u32": raw(torch.uint32, 3), "u64": raw(torch.uint64, 2)},
        "other": {"flag": torch.tensor([True, False, True]), "c64": raw(torch.complex64, 3),
                  "c128": raw(torch.complex128, 2), "f8": raw(torch.float8_e4m3fn, 4),
                  "f8b": raw(torch.float8_e5m2, 4), "scalar": torch.tensor(2.5), "empty": torch.empty(0, 3)},
        "layers": [{"w": raw(torch.float32, 2, 2)}, {"w": raw(torch.float32, 3)}],
        "objects": {"step": 17, "lr": 0.125, "name": "torch-2.13", "none": None, "yes": True,
                    "pair": (1, "two"), "conf": {"betas": (0.9, 0.999), "eps": 1e-8},
                    "raw": b"\x00\xffbytes", "plain_list": [1, 2, 3], "nested": [[1, 2], ["a"]]},
        "dotted.key": torch.arange(4, dtype=torch.int32),
    }


def run_torch_save(out):
    dcp.save(torch_state(), checkpoint_id=str(out))
    return None


def load_all(ckpt):
    md = read_metadata(ckpt)
    dest = {}
    for fqn, item in md.state_dict_metadata.items():
        value = torch.zeros(item.size, dtype=item.properties.dtype) \
            if isinstance(item, TensorStorageMetadata) else None
        set_element(dest, md.planner_data[fqn], value)
    dcp.load(dest, checkpoint_id=str(ckpt))
    return md, {fqn: get_element(dest, md.planner_data[fqn]) for fqn in md.state_dict_metadata}


def run_compare(orig, copy):
    md_a, a = load_all(orig)
    md_b, b = load_all(copy)
    if list(a) != list(b):
        return "keys %s, expected %s" % (list(b), list(a))
    if {k: tuple(v) for k, v in md_a.planner_data.items()} != {k: tuple(v) for k, v in md_b.planner_data.items()}:
        return "planner_data differs: %r vs %r" % (md_b.planner_data, md_a.planner_data)
    for fqn in a:
        x, y = a[fqn], b[fqn]
        ix, iy = md_a.state_dict_metadata[fqn], md_b.state_dict_metadata[fqn]
        if isinstance(x, torch.Tensor):
            bad = same_tensor(y, x)
            if not bad and ix.properties.requires_grad != iy.properties.requires_grad:
                bad = "requires_grad differs"
        else:
            bad = None if same_object(y, x) else "%r, expected %r" % (y, x)
        if bad:
            return "%s: %s" % (fqn, bad)
    # and the original values, as torch saved them
    want = torch_state()
    for fqn, path in md_b.planner_data.items():
        w = get_element(want, path)
        got = b[fqn]
        bad = same_tensor(got, w) if isinstance(w, torch.Tensor) else (
            None if same_object(got, w) else "%r, expected %r" % (got, w))
        if bad:
            return "%s vs the saved value: %s" % (fqn, bad)
    return None


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    mode = argv[1]
    if mode == "load":
        manifest = json.loads(Path(argv[2]).read_text())
        ok = all([report(c["name"], run_load, c) for c in manifest["checks"]])
    elif mode == "dist":
        ok = run_dist(json.loads(Path(argv[2]).read_text()))
    elif mode == "torch_save":
        ok = report("torch_save", run_torch_save, argv[2])
    elif mode == "compare":
        ok = report("compare", run_compare, argv[2], argv[3])
    else:
        raise SystemExit("unknown mode %r" % mode)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
