"""Oracles for `dcpp convert FILE CKPT_DIR` (tests/convert/test_import.cpp), run with real torch.

  check_import.py make DIR            torch 2.13: DIR/x.pt (nested dicts, lists, every dtype
                                      torch.save takes, 0-dim, empty, transposed, a view sharing a
                                      storage, stride-0 and overlapping views, objects) and DIR/x.safetensors (safetensors library)
  check_import.py make113 DIR         torch 1.13: DIR/x113.pt with 1.13's dtypes
  check_import.py load ORIG CKPT...   torch 2.13 dcp.load (no process group) of each CKPT into a
                                      template of ORIG (.pt or .safetensors) and a bitwise compare
  check_import.py load113 ORIG CKPT   torch 1.13 load_state_dict(no_dist=True) into the top-level keys
  check_import.py same ORIG OTHER.pt  torch.load of both, compared

Prints "check_import: OK: ..." or "check_import: FAIL: ..." (exit 1) per check.
"""
import collections
import sys

import torch


def fail(message):
    print("check_import: FAIL: " + message)
    sys.exit(1)


def make(out):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = collections.OrderedDict()
    sd["model"] = {
        "linear": {"weight": torch.randn(5, 3), "bias": torch.randn(5)},
        "transposed": torch.randn(3, 7).t(),  # non-contiguous
        "base": base,
        "view": base[1:3, 2:5],  # shares base's storage, offset and strides
        "broadcast": torch.arange(3.0).expand(4, 3),  # stride 0: each element written 4 times
        "overlapping": torch.arange(10.0).as_strided((5, 4), (1, 1)),  # rows overlap
    }
    dtypes = [torch.bool, torch.bfloat16, torch.float16, torch.int8, torch.uint8, torch.int16, torch.int32,
              torch.int64, torch.float64, torch.complex64, torch.uint16, torch.uint32, torch.uint64,
              torch.float8_e4m3fn, torch.float8_e5m2, torch.float32]
    sd["dtypes"] = {}
    for i, dt in enumerate(dtypes):
        raw = torch.randint(0, 120, (7, 3), dtype=torch.int64)
        sd["dtypes"][str(dt).replace("torch.", "")] = raw.to(dt) if dt not in (torch.uint16, torch.uint32, torch.uint64) \
            else raw.to(torch.int32).to(dt)
    sd["dtypes"]["nan_payload"] = torch.tensor([0x7FC00001, -0x3EDCBB], dtype=torch.int32).view(torch.float32)
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.empty(0, 4)
    sd["layers"] = [torch.randn(2, 2), torch.randn(3)]  # a list of tensors: descended by index
    sd["ints"] = [1, 2, 3]  # no tensor: one object
    sd["objects"] = {"s": "text", "i": 7, "f": 0.25, "n": None, "t": (1, "a", 2.5), "d": {"lr": 0.1, "betas": (0.9, 0.99)}}
    sd[3] = torch.ones(2)  # str(key) = "3"
    torch.save(sd, out + "/x.pt")

    import safetensors.torch
    flat = {"embed.weight": torch.randn(10, 4), "layer.0.bias": torch.randn(4).to(torch.bfloat16),
            "i8": torch.randint(-5, 5, (3, 3), dtype=torch.int8), "b": torch.tensor([True, False]),
            "f16": torch.randn(6).half(), "i64": torch.arange(5), "f8": torch.randn(4).to(torch.float8_e4m3fn),
            "u16": torch.arange(4, dtype=torch.int32).to(torch.uint16), "scalar": torch.tensor(1.5),
            "empty": torch.empty(0, 3)}
    safetensors.torch.save_file(flat, out + "/x.safetensors", metadata={"format": "pt", "note": "hi"})
    print("check_import: OK: made " + out)


def make113(out):
    sd = {"w": torch.randn(4, 3), "t": torch.randn(3, 5).t(), "nested": {"b": torch.randn(2).double(),
          "i": torch.arange(6, dtype=torch.int32), "h": torch.randn(3).half(), "bf": torch.randn(3).bfloat16(),
          "flag": torch.tensor([True, False, True])}, "layers": [torch.randn(2)], "step": 5, "name": "m"}
    torch.save(sd, out + "/x113.pt")
    print("check_import: OK: made " + out)


def load_original(path):
    if path.endswith(".safetensors"):
        import safetensors.torch
        return safetensors.torch.load_file(path)
    return torch.load(path, weights_only=False)


def same(a, b, where):
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor):
            fail(f"{where}: expected a tensor, got {type(b)}")
        if a.dtype != b.dtype or a.shape != b.shape:
            fail(f"{where}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}")
        if not torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)):
            fail(f"{where}: values differ")
    elif isinstance(a, dict):
        if not isinstance(b, dict) or sorted(map(str, a)) != sorted(map(str, b)):
            fail(f"{where}: keys {list(a)} vs {list(b) if isinstance(b, dict) else type(b)}")
        for k, v in a.items():
            same(v, b[k], f"{where}.{k}")
    elif isinstance(a, list) and any(isinstance(v, (torch.Tensor, dict, list)) for v in a):
        if not isinstance(b, list) or len(a) != len(b):
            fail(f"{where}: list of {len(a)} vs {b!r}")
        for i, (v, w) in enumerate(zip(a, b)):
            same(v, w, f"{where}.{i}")
    elif a != b or type(a) != type(b):
        fail(f"{where}: {a!r} vs {b!r}")


def template(value):
    """The state dict to load into: tensors zeroed (same shape and dtype), objects replaced."""
    if isinstance(value, torch.Tensor):
        return torch.zeros(value.shape, dtype=value.dtype)
    if isinstance(value, dict):
        return {str(k): template(v) for k, v in value.items()}
    if isinstance(value, list) and any(isinstance(v, (torch.Tensor, dict, list)) for v in value):
        return [template(v) for v in value]
    return "placeholder"


def str_keys(value):
    if isinstance(value, dict):
        return {str(k): str_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [str_keys(v) for v in value]
    return value


def load(original, ckpts):
    import torch.distributed.checkpoint as dcp
    orig = load_original(original)
    for ckpt in ckpts:
        sd = template(orig)
        dcp.load(sd, checkpoint_id=ckpt)
        same(str_keys(orig), sd, "")
        print(f"check_import: OK: {ckpt} loads as {original}")


def load113(original, ckpt):
    import os
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import dcp113  # noqa: F401  (makes torch 1.13's DCP importable on Python 3.11)
    from torch.distributed._shard.checkpoint import FileSystemReader, load_state_dict
    orig = torch.load(original)  # 1.13 keeps the top-level keys: nested values are objects
    sd = {k: torch.zeros(v.shape, dtype=v.dtype) if isinstance(v, torch.Tensor) else "placeholder" for k, v in orig.items()}
    load_state_dict(sd, FileSystemReader(ckpt), no_dist=True)
    same(orig, sd, "")
    print(f"check_import: OK: {ckpt} loads with torch 1.13 as {original}")


def main():
    cmd = sys.argv[1]
    if cmd == "make":
        make(sys.argv[2])
    elif cmd == "make113":
        make113(sys.argv[2])
    elif cmd == "load":
        load(sys.argv[2], sys.argv[3:])
    elif cmd == "load113":
        load113(sys.argv[2], sys.argv[3])
    elif cmd == "same":
        same(str_keys(load_original(sys.argv[2])), torch.load(sys.argv[3], weights_only=False), "")
        print(f"check_import: OK: {sys.argv[3]} equals {sys.argv[2]}")
    else:
        fail("unknown command " + cmd)


if __name__ == "__main__":
    main()
