#!/usr/bin/env python3
"""The oracle for nested state dicts in torch 1.13 checkpoints (tests/convert, test_nested113.cpp).
torch 1.13's save_state_dict keeps a state dict's top-level keys: a tensor value is a tensor
item, any other value one BYTE_IO item holding torch.save(value), the tensors inside it
included. These commands let real torch write and read such checkpoints.

  nested113.py make DIR           torch 1.13: DIR/sd.pt (torch.save of the state dict below) and
                                  DIR/ckpt113 (save_state_dict of it, no_dist)
  nested113.py check DIR CKPT...  torch 1.13: each CKPT has exactly the keys and item kinds of
                                  DIR/ckpt113, and load_state_dict(no_dist) of it gives exactly
                                  what torch.load(DIR/sd.pt) gives: types (Parameter, OrderedDict,
                                  tuple, ...), keys, dtypes, shapes, strides, storage offsets,
                                  requires_grad, every byte, and which tensors share a storage
  nested113.py same DIR OTHER.pt  torch 1.13: torch.load(OTHER.pt) is exactly DIR's state dict
  nested113.py make2x DIR         torch 2.13: DIR/ckpt2x (dcp.save of a nested state dict) and
                                  DIR/ref2x.pt (torch.save of the same state dict)
  nested113.py check2x DIR CKPT   torch 1.13: CKPT's keys are the top-level keys of DIR/ref2x.pt
                                  (empty dicts aside, which dcp.save drops), every nested value a
                                  BYTE_IO item, and load_state_dict gives the values torch.load
                                  (DIR/ref2x.pt) gives (tensors by dtype, shape and bytes; dicts
                                  of any kind compare as dicts, a parameter as its tensor)

Prints "nested113: OK: ..." or "nested113: FAIL: ..." (exit 1).
"""
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def fail(message):
    print("nested113: FAIL: " + message)
    sys.exit(1)


def state_dict(torch):
    """Every kind of value a 1.13 state dict holds at the top and nested below it."""
    g = torch.Generator().manual_seed(113)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "weight": torch.randn(5, 3, generator=g),
        "param": torch.nn.Parameter(torch.randn(3, generator=g)),
        "step": 7,
        "name": "model-113",
        "lr": 0.25,
        "flag": True,
        "nothing": None,
        "pair": (1, "a", 2.5),
        "blob": b"\x00\x01\xff",
        "model": collections.OrderedDict([
            ("fc.weight", torch.randn(4, 3, generator=g)),
            ("fc.bias", torch.randn(4, generator=g).double()),
            ("bn.num_batches_tracked", torch.tensor(3)),
        ]),
        "obj.dict": {"a": torch.ones(2, 2), "b": 3,
                     "nested": {"c": torch.arange(5, dtype=torch.int32), "d": [1, 2.5, "x"]}},
        "layers": [torch.randn(2, generator=g), torch.randn(3, generator=g).half(), None],
        "views": {"base": base, "window": base[1:3, 2:5], "t": base.t()},
        "optim": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(5, 3, generator=g)},
                            1: {"step": torch.tensor(3.0), "exp_avg": torch.randn(3, generator=g)}},
                  "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 1]}]},
        "dtypes": {"bf16": torch.randn(3, generator=g).bfloat16(), "bool": torch.tensor([True, False]),
                   "i8": torch.tensor([-128, 127], dtype=torch.int8), "u8": torch.tensor([0, 255], dtype=torch.uint8),
                   "i16": torch.tensor([-5, 5], dtype=torch.int16), "i64": torch.tensor([2 ** 40]),
                   "c64": torch.randn(2, generator=g).to(torch.complex64),
                   "nan": torch.tensor([0x7FC00001, -0x3EDCBB], dtype=torch.int32).view(torch.float32)},
        "edge": {"empty": torch.empty(0, 4), "scalar": torch.tensor(2.5),
                 "param": torch.nn.Parameter(torch.randn(2, generator=g))},
        "tensors_in_tuple": (torch.ones(1), torch.zeros(2)),
        "empty_dict": {},
    }


def state_dict_2x(torch):
    """What torch 2.x's dcp.save flattens: no int keys (its paths make them str), no storage
    sharing (each leaf is saved on its own), no Parameters (a path keeps no type)."""
    g = torch.Generator().manual_seed(213)
    return {
        "weight": torch.randn(5, 3, generator=g),
        "step": 7,
        "model": {"fc": {"weight": torch.randn(4, 3, generator=g), "bias": torch.randn(4, generator=g).double()},
                  "bn.num_batches_tracked": torch.tensor(3)},
        "layers": [torch.randn(2, generator=g), {"w": torch.randn(3, generator=g).half()}, None],
        "optim": {"state": {"fc.weight": {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 3, generator=g)}},
                  "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": ["fc.weight"]}]},
        "edge": {"empty": torch.empty(0, 4), "scalar": torch.tensor(2.5), "ints": [1, 2, 3], "text": "x"},
        "empty_dict": {},
    }


def storage_id(t):
    return t.storage().data_ptr()


def same(torch, a, b, where, sharing, strict=True):
    """Exact comparison; `sharing` maps a's storages to b's, so that tensors sharing a storage
    in a must share one in b (and only those)."""
    if strict and type(a) is not type(b):
        fail(f"{where}: {type(a).__name__} vs {type(b).__name__}")
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor):
            fail(f"{where}: a tensor vs {type(b).__name__}")
        if a.dtype != b.dtype or a.shape != b.shape:
            fail(f"{where}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}")
        if strict and (a.stride() != b.stride() or a.storage_offset() != b.storage_offset()
                       or a.requires_grad != b.requires_grad):
            fail(f"{where}: stride {a.stride()} offset {a.storage_offset()} requires_grad {a.requires_grad} vs "
                 f"{b.stride()} {b.storage_offset()} {b.requires_grad}")
        raw = lambda t: t.detach().contiguous().reshape(-1).view(torch.uint8)  # noqa: E731
        if not torch.equal(raw(a), raw(b)):
            fail(f"{where}: bytes differ")
        if strict and a.numel():
            mine = sharing.setdefault(storage_id(a), storage_id(b))
            if mine != storage_id(b) or list(sharing.values()).count(storage_id(b)) != 1:
                fail(f"{where}: storage sharing differs")
    elif isinstance(a, dict):
        if not isinstance(b, dict) or list(a.keys()) != list(b.keys()):
            fail(f"{where}: keys {list(a)} vs {list(b) if isinstance(b, dict) else type(b).__name__}")
        for k in a:
            same(torch, a[k], b[k], f"{where}.{k}", sharing, strict)
    elif isinstance(a, (list, tuple)):
        if len(a) != len(b):
            fail(f"{where}: {len(a)} vs {len(b)} entries")
        for i, (x, y) in enumerate(zip(a, b)):
            same(torch, x, y, f"{where}.{i}", sharing, strict)
    elif a != b or type(a) is not type(b):
        fail(f"{where}: {a!r} vs {b!r}")


def load113(ckpt):
    """torch 1.13's load_state_dict into the template its own metadata asks for."""
    from dcp113 import dcp, torch, TensorStorageMetadata
    reader = dcp.FileSystemReader(ckpt)
    md = reader.read_metadata()
    sd = {k: torch.zeros(m.size, dtype=m.properties.dtype) if isinstance(m, TensorStorageMetadata) else None
          for k, m in md.state_dict_metadata.items()}
    dcp.load_state_dict(sd, reader, no_dist=True)
    return md, sd


def kinds(md):
    return {k: type(m).__name__ for k, m in md.state_dict_metadata.items()}


def make(out):
    import dcp113  # noqa: F401
    from dcp113 import dcp, torch
    sd = state_dict(torch)
    torch.save(sd, os.path.join(out, "sd.pt"))
    dcp.save_state_dict(sd, dcp.FileSystemWriter(os.path.join(out, "ckpt113")), no_dist=True)
    print("nested113: OK: made " + out)


def check(out, ckpts):
    from dcp113 import torch
    want = torch.load(os.path.join(out, "sd.pt"))
    want_md, _ = load113(os.path.join(out, "ckpt113"))
    for ckpt in ckpts:
        md, got = load113(ckpt)
        if kinds(md) != kinds(want_md):
            fail(f"{ckpt}: items {kinds(md)}, torch 1.13 saves {kinds(want_md)}")
        for key, value in want.items():
            if isinstance(value, torch.Tensor):  # an item: loaded into the template, as 1.13 does
                same(torch, value.detach().contiguous(), got[key], key, {}, strict=False)
            else:
                same(torch, value, got[key], key, {})
        print(f"nested113: OK: {ckpt} loads with torch 1.13 as {out}/sd.pt")


def same_pt(out, other):
    from dcp113 import torch
    want, got = torch.load(os.path.join(out, "sd.pt")), torch.load(other)
    if list(want) != list(got):
        fail(f"{other}: keys {list(got)} vs {list(want)}")
    for key in want:
        # Items come from .metadata as contiguous tensors; objects keep what torch.save wrote.
        if isinstance(want[key], torch.Tensor):
            same(torch, want[key].detach().contiguous(), got[key].detach(), key, {}, strict=False)
        else:
            same(torch, want[key], got[key], key, {})
    print(f"nested113: OK: {other} equals {out}/sd.pt")


def make2x(out):
    import torch
    import torch.distributed.checkpoint as dcp
    sd = state_dict_2x(torch)
    torch.save(sd, os.path.join(out, "ref2x.pt"))
    dcp.save(sd, checkpoint_id=os.path.join(out, "ckpt2x"), no_dist=True)
    print("nested113: OK: made " + out)


def check2x(out, ckpt):
    from dcp113 import torch, BytesStorageMetadata
    want = {k: v for k, v in torch.load(os.path.join(out, "ref2x.pt")).items() if not (isinstance(v, dict) and not v)}
    md, got = load113(ckpt)
    if list(md.state_dict_metadata) != list(want):
        fail(f"{ckpt}: keys {list(md.state_dict_metadata)} vs {list(want)}")
    for key, value in want.items():
        if not isinstance(value, torch.Tensor) and not isinstance(md.state_dict_metadata[key], BytesStorageMetadata):
            fail(f"{ckpt}: {key} is not one BYTE_IO item")
        same(torch, value, got[key], key, {}, strict=False)
    print(f"nested113: OK: {ckpt} loads with torch 1.13 as {out}/ref2x.pt")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "make":
        make(args[0])
    elif cmd == "check":
        check(args[0], args[1:])
    elif cmd == "same":
        same_pt(args[0], args[1])
    elif cmd == "make2x":
        make2x(args[0])
    elif cmd == "check2x":
        check2x(args[0], args[1])
    else:
        fail("unknown command " + cmd)


if __name__ == "__main__":
    main()
