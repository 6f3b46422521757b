#!/usr/bin/env python3
"""Oracle for the Hugging Face model directories dcpp writes (`dcpp convert --format hf`).

Usage (the repository's virtualenv, .venv/bin/python):

    check_hf_write.py make CKPT            torch 2.13's dcp.save of a state dict of many dtypes
                                           and sizes (seeded), into CKPT
    check_hf_write.py check CKPT OUT MAX   OUT is what dcpp wrote from CKPT with
                                           --max-shard-size MAX (bytes)
    check_hf_write.py consolidated IN OUT  OUT is what dcpp wrote from IN, torch's per-rank
                                           files (save_distributed)

`check` asks huggingface_hub's split_torch_state_dict_into_shards (the rule transformers'
save_pretrained uses) how the checkpoint's tensors, in the checkpoint's order, split at MAX,
and requires exactly those files in OUT (no other entry, hidden ones included), the index
file's JSON equal to what huggingface_hub's save_torch_state_dict writes (metadata.total_size,
weight_map in its order; no index for one file), each shard read by
`safetensors.torch.load_file` holding exactly its tensors (dtype, shape, bytes) with
`__metadata__` {"format": "pt"}, and torch 2.13's dcp.load with HuggingFaceStorageReader
loading every tensor exactly. The expected tensors come from torch's own dcp.load of CKPT.
`consolidated` runs torch 2.13's consolidate_safetensors_files over IN (every key into one
file) and requires OUT to hold exactly the same tensors (keys, dtypes, shapes, bytes), each
shard read by `safetensors.torch.load_file`. torch's consolidation sizes elements with
torch.finfo and so fails on integer and bool tensors: when IN has such keys, it consolidates a
copy of IN without them (rewritten by the safetensors library, DCP_SHARDING_INFO filtered to
match), and those keys are compared with the per-rank pieces placed at their saved_offsets.
Prints OK; exit 1 with FAIL lines otherwise.
"""
import json
import os
import sys

import torch
import torch.distributed.checkpoint as dcp


def make(ckpt):
    g = torch.Generator().manual_seed(7)
    sd = {
        "embed.weight": torch.randn(300, 64, generator=g),                     # 76800 bytes
        "layers.0.attn.weight": torch.randn(64, 64, generator=g).to(torch.bfloat16),
        "layers.0.attn.bias": torch.randn(64, generator=g).to(torch.float16),
        "layers.0.mlp.weight": torch.randn(128, 64, generator=g).to(torch.float64),  # 65536
        "layers.0.mask": torch.rand(17, 3, generator=g) > 0.5,
        "layers.1.ids": torch.randint(-2**40, 2**40, (33,), generator=g),
        "layers.1.small": torch.randint(0, 255, (5, 7), generator=g).to(torch.uint8),
        "layers.1.i8": torch.randint(-128, 127, (9,), generator=g).to(torch.int8),
        "layers.1.i16": torch.randint(-30000, 30000, (4, 4), generator=g).to(torch.int16),
        "layers.1.i32": torch.randint(-2**30, 2**30, (6,), generator=g).to(torch.int32),
        "layers.1.f8": torch.randn(8, 8, generator=g).to(torch.float8_e4m3fn),
        "layers.1.c64": torch.randn(3, 5, dtype=torch.complex64, generator=g),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "lm_head.weight": torch.randn(200, 64, generator=g),                   # 51200
        "z.tail": torch.randn(10, generator=g),
    }
    dcp.save(sd, checkpoint_id=ckpt)


def raw(t):
    t = t.contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def check(ckpt, out, max_shard):
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torch.distributed.checkpoint import FileSystemReader, HuggingFaceStorageReader

    fails = []
    md = FileSystemReader(ckpt).read_metadata()
    expected = {}
    for key, item in md.state_dict_metadata.items():  # the checkpoint's order, as dcpp reads it
        expected[key] = torch.empty(item.size, dtype=item.properties.dtype)
    dcp.load(expected, checkpoint_id=ckpt)

    split = split_torch_state_dict_into_shards(expected, max_shard_size=max_shard)
    names = sorted(n for n in os.listdir(out))
    want = sorted(split.filename_to_tensors) + (["model.safetensors.index.json"] if split.is_sharded else [])
    if names != want:
        fails.append(f"files {names} != huggingface_hub's {want}")
    if split.is_sharded and os.path.exists(os.path.join(out, "model.safetensors.index.json")):
        with open(os.path.join(out, "model.safetensors.index.json")) as f:
            text = f.read()
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        if json.loads(text) != index:
            fails.append("index differs from huggingface_hub's: " + text[:400])
        if list(json.loads(text)["weight_map"]) != list(split.tensor_to_filename):
            fails.append("weight_map order differs from huggingface_hub's")
    for name, keys in split.filename_to_tensors.items():
        path = os.path.join(out, name)
        if not os.path.exists(path):
            continue
        got = load_file(path)
        if sorted(got) != sorted(keys):
            fails.append(f"{name}: keys {sorted(got)} != {sorted(keys)}")
        with safe_open(path, "pt") as f:
            if f.metadata() != {"format": "pt"}:
                fails.append(f"{name}: __metadata__ {f.metadata()}")
        for key in keys:
            if key in got and (got[key].dtype != expected[key].dtype or got[key].shape != expected[key].shape or
                               raw(got[key]) != raw(expected[key])):
                fails.append(f"{name}: {key} differs in load_file")
    if not fails:
        dest = {k: torch.zeros_like(v) for k, v in expected.items()}
        dcp.load(dest, storage_reader=HuggingFaceStorageReader(out))
        for key, t in dest.items():
            if raw(t) != raw(expected[key]):
                fails.append(f"{key} differs in HuggingFaceStorageReader")
    for f in fails:
        print("FAIL", f)
    print("OK" if not fails else f"{len(fails)} failures")
    return 1 if fails else 0


def model_tensors(model_dir):
    """Every tensor of a model directory, by the index's weight_map or its one file."""
    from safetensors.torch import load_file
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        tensors.update(load_file(os.path.join(model_dir, name)))
    return tensors


def consolidated(sharded, out):
    import glob
    import struct as st
    import tempfile
    from torch.distributed.checkpoint._consolidate_hf_safetensors import consolidate_safetensors_files

    from safetensors import safe_open
    from safetensors.torch import save_file

    pieces = {}  # key -> [(saved_offsets, tensor)]
    for path in sorted(glob.glob(os.path.join(sharded, "*.safetensors"))):
        with safe_open(path, "pt") as f:
            info = json.loads(f.metadata()["DCP_SHARDING_INFO"])
            for key in f.keys():
                pieces.setdefault(key, []).append((info[key]["saved_offsets"], f.get_tensor(key)))
    floats = {k for k, p in pieces.items() if p[0][1].is_floating_point()}
    fails = []
    with tempfile.TemporaryDirectory() as tmp:
        source = sharded
        if floats != set(pieces):
            source = os.path.join(tmp, "floats")
            os.mkdir(source)
            for path in glob.glob(os.path.join(sharded, "*.safetensors")):
                with safe_open(path, "pt") as f:
                    md = f.metadata()
                    keep = {k: f.get_tensor(k) for k in f.keys() if k in floats}
                info = json.loads(md["DCP_SHARDING_INFO"])
                md["DCP_SHARDING_INFO"] = json.dumps({k: v for k, v in info.items() if k in keep})
                save_file(keep, os.path.join(source, os.path.basename(path)), metadata=md)
        os.mkdir(os.path.join(tmp, "out"))
        consolidate_safetensors_files(source, os.path.join(tmp, "out"), {k: 1 for k in sorted(floats)})
        want = model_tensors(os.path.join(tmp, "out"))
    for key in set(pieces) - floats:
        parts = pieces[key]
        shape = [max(o[d] + t.shape[d] for o, t in parts) for d in range(parts[0][1].dim())]
        full = torch.zeros(shape, dtype=parts[0][1].dtype)
        for offsets, t in parts:
            full[tuple(slice(o, o + n) for o, n in zip(offsets, t.shape))] = t
        want[key] = full
    got = model_tensors(out)
    if sorted(got) != sorted(want):
        fails.append(f"keys {sorted(got)} != torch's {sorted(want)}")
    for key, t in want.items():
        if key in got and (got[key].dtype != t.dtype or got[key].shape != t.shape or raw(got[key]) != raw(t)):
            fails.append(f"{key} differs from torch's consolidation")
    for f in fails:
        print("FAIL", f)
    print("OK" if not fails else f"{len(fails)} failures")
    return 1 if fails else 0


if __name__ == "__main__":
    if sys.argv[1] == "consolidated":
        sys.exit(consolidated(sys.argv[2], sys.argv[3]))
    if sys.argv[1] == "make":
        make(sys.argv[2])
        sys.exit(0)
    sys.exit(check(sys.argv[2], sys.argv[3], int(sys.argv[4])))
