#!/usr/bin/env python3
"""Write safetensors checkpoints with the safetensors library and torch 2.13's
HuggingFaceStorageWriter, plus the values they must load to; and hostile ones.

Usage (the repository's virtualenv, .venv/bin/python):

    make_hf.py --out ROOT            every case below, each in ROOT/NAME/
    make_hf.py --hostile ROOT        damaged model directories in ROOT/NAME/, ROOT/hostile.json

A case directory holds `ckpt/` (what the writer wrote), `expected.json` and `expected/*.bin`:

    {"case": NAME, "path": "ckpt" | "ckpt/model.safetensors" | "ckpt/sharded" (what dcpp is given,
     relative to the case directory), "source": "safetensors" | "hf-index" | "hf-directory" |
     "hf-sharded", "world_size": W,
     "tensors": {KEY: {"path": [KEY], "dtype", "shape", "nbytes", "file": "expected/<bin>"}},
     "objects": {}}

Cases:
  st_file        safetensors.torch.save_file of every dtype torch and safetensors share (bit
                 patterns, a 0-dim and an empty tensor), one model.safetensors
  st_repo        save_file into model-0000i-of-00003.safetensors + model.safetensors.index.json
                 as transformers writes it (a model repository)
  st_dir         two safetensors files, no index
  hf_1proc       HuggingFaceStorageWriter(fqn_to_index_mapping over 3 files), one process
  hf_2ranks      2 Gloo ranks, DTensors, HuggingFaceStorageWriter(save_distributed=True)
  hf_4ranks      4 Gloo ranks (a 1-D and a 2x2 mesh), save_distributed, no consolidation
  hf_4ranks_cons the same with enable_consolidation=True and fqn_to_index_mapping over 2 files:
                 ckpt/ holds the consolidated model (path "ckpt"), ckpt/sharded the rank files
                 (a second case directory, hf_4ranks_cons_sharded, points at them)

Tensor bytes come from independent readers: every file's header is parsed here with `json` and
`struct` (the format's spec) and each tensor's bytes sliced from the file; that must equal
`safetensors.torch.load_file` (where the library reads the dtype) and, for the torch cases, the
values the ranks saved (DTensors gathered with full_tensor()) and torch's own dcp.load with
HuggingFaceStorageReader. Quiet on success; exit 1 with a message on failure.

--hostile writes damaged directories and files; hostile.json lists, for each, the path to give
dcpp (relative to ROOT) and what the one-line error must name: the file (a path suffix), the
key and "byte N", N computed here from the bytes written.
"""

import argparse
import json
import os
import shutil
import socket
import struct
import sys
import warnings
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from expected_common import (  # noqa: E402
    BF16_BITS, F16_BITS, F32_BITS, F64_BITS, CaseError, bin_name, ints, randn, with_bits)

if sys.byteorder != "little":
    raise SystemExit("these scripts assume a little-endian host")

# safetensors' dtype codes for the torch dtypes that have one (the format's spec).
CODES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
         "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
         "U8": torch.uint8, "BOOL": torch.bool, "C64": torch.complex64, "U64": torch.uint64,
         "U32": torch.uint32, "U16": torch.uint16, "F8_E4M3": torch.float8_e4m3fn,
         "F8_E5M2": torch.float8_e5m2, "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
         "F8_E5M2FNUZ": torch.float8_e5m2fnuz, "F8_E8M0": torch.float8_e8m0fnu}


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def raw(name, dtype, *shape):
    """Random bytes viewed as `dtype` (every bit pattern, NaNs included), seeded by name."""
    n = 1
    for d in shape:
        n *= d
    size = torch.empty((), dtype=dtype).element_size()
    g = torch.Generator()
    g.manual_seed(sum(name.encode()) * 7919 + len(name))
    b = torch.randint(0, 256, (n * size,), generator=g, dtype=torch.uint8)
    return b.view(dtype).reshape(shape) if n else torch.empty(shape, dtype=dtype)


def dtype_tensors(prefix=""):
    """One tensor of every dtype the list has, with edge bit patterns; a 0-dim and an empty one."""
    t = {
        "f32": with_bits(torch, randn(torch, "f32", 5, 7), torch.int32, 32, F32_BITS),
        "f64": with_bits(torch, randn(torch, "f64", 3, 5, dtype=torch.float64), torch.int64, 64, F64_BITS),
        "f16": with_bits(torch, randn(torch, "f16", 4, 6, dtype=torch.float16), torch.int16, 16, F16_BITS),
        "bf16": with_bits(torch, randn(torch, "bf16", 6, 4, dtype=torch.bfloat16), torch.int16, 16, BF16_BITS),
        "i8": ints(torch, "i8", torch.int8, -128, 128, 17, [-128, 127, 0, -1]),
        "u8": ints(torch, "u8", torch.uint8, 0, 256, 19, [0, 255]),
        "i16": ints(torch, "i16", torch.int16, -2**15, 2**15, 11, [-2**15, 2**15 - 1]),
        "i32": ints(torch, "i32", torch.int32, -2**31, 2**31, 13, [-2**31, 2**31 - 1]).reshape(13, 1),
        "i64": ints(torch, "i64", torch.int64, -2**62, 2**62, 9, [-2**63, 2**63 - 1]),
        "bool": ints(torch, "bool", torch.int64, 0, 2, 10, [0, 1]).to(torch.bool),
        "c64": raw("c64", torch.complex64, 4, 3),
        "u16": raw("u16", torch.uint16, 5, 2),
        "u32": raw("u32", torch.uint32, 7),
        "u64": raw("u64", torch.uint64, 2, 3),
        "f8e4m3": raw("f8e4m3", torch.float8_e4m3fn, 8, 8),
        "f8e5m2": raw("f8e5m2", torch.float8_e5m2, 3, 9),
        "f8e4m3fnuz": raw("f8e4m3fnuz", torch.float8_e4m3fnuz, 16),
        "f8e5m2fnuz": raw("f8e5m2fnuz", torch.float8_e5m2fnuz, 2, 2, 2),
        "f8e8m0": raw("f8e8m0", torch.float8_e8m0fnu, 6, 5),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 4),
        "model.layers.0.attn.q_proj.weight": randn(torch, "q_proj", 16, 12, dtype=torch.bfloat16),
    }
    return {prefix + k: v for k, v in t.items()}


def model_tensors(prefix=""):
    """A small model's weights: what a transformer repository holds."""
    t = {}
    for layer in range(3):
        for name, shape in (("attn.q_proj.weight", (16, 16)), ("attn.o_proj.weight", (16, 16)),
                            ("mlp.up_proj.weight", (24, 16)), ("norm.weight", (16,))):
            key = "model.layers.%d.%s" % (layer, name)
            t[key] = randn(torch, key, *shape, dtype=torch.bfloat16 if layer % 2 else torch.float32)
    t["model.embed_tokens.weight"] = randn(torch, "embed", 50, 16)
    t["lm_head.weight"] = randn(torch, "lm_head", 50, 16, dtype=torch.float16)
    t["model.layers.0.counter"] = torch.tensor(7, dtype=torch.int64)
    return {prefix + k: v for k, v in t.items()}


# --------------------------------------------------------------------------------------
# the independent reader: the format's spec with json and struct


def read_header(path):
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return data, 8 + n, header


def raw_tensors(path):
    """{key: (dtype, shape, bytes)} of one file, sliced as the spec says."""
    data, start, header = read_header(path)
    out = {}
    for key, e in header.items():
        if key == "__metadata__":
            continue
        b, end = e["data_offsets"]
        out[key] = (CODES[e["dtype"]], e["shape"], data[start + b:start + end])
    return out


def tensor_bytes(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def check_same(what, key, got_bytes, want):
    if got_bytes != tensor_bytes(want):
        raise CaseError("%s: %s: bytes differ from the saved value" % (what, key))


def write_expected(case_dir, case, path, source, world, full):
    """full: {key: tensor} (the whole values)."""
    exp = case_dir / "expected"
    exp.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, t in full.items():
        name = bin_name(key)
        (exp / name).write_bytes(tensor_bytes(t))
        tensors[key] = {"path": [key], "dtype": dtype_name(t.dtype), "shape": list(t.shape),
                        "nbytes": t.numel() * t.element_size(), "file": "expected/" + name}
    doc = {"case": case, "path": path, "source": source, "world_size": world, "tensors": tensors,
           "objects": {}}
    (case_dir / "expected.json").write_text(json.dumps(doc, indent=1))


def check_files(what, files, full):
    """Every file sliced by the spec: each tensor whole in one file equals the saved value, and
    load_file (where the library has the dtype) agrees."""
    seen = {}
    for f in files:
        for key, (dtype, shape, data) in raw_tensors(f).items():
            if key in seen:
                raise CaseError("%s: %s in two files" % (what, key))
            seen[key] = True
            if dtype != full[key].dtype or list(shape) != list(full[key].shape):
                raise CaseError("%s: %s: header says %s %s" % (what, key, dtype, shape))
            check_same(what, key, data, full[key])
        try:
            loaded = load_file(str(f))
        except KeyError:  # a dtype the library's torch binding lacks (F8_E8M0)
            continue
        for key, t in loaded.items():
            check_same(what + " (load_file)", key, tensor_bytes(t), full[key])
    if set(seen) != set(full):
        raise CaseError("%s: keys %s, expected %s" % (what, sorted(seen), sorted(full)))


def torch_hf_load(path, full):
    """torch's own HuggingFaceStorageReader, into full-size tensors, must give `full`."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    dest = {k: torch.zeros_like(v) for k, v in full.items() if v.dtype != torch.float8_e8m0fnu}
    dcp.load(dest, storage_reader=HuggingFaceStorageReader(str(path)))
    for key, t in dest.items():
        check_same("HuggingFaceStorageReader", key, tensor_bytes(t), full[key])


# --------------------------------------------------------------------------------------
# single-process cases


def case_st_file(root):
    d = root / "st_file"
    (d / "ckpt").mkdir(parents=True)
    full = dtype_tensors()
    save_file(full, str(d / "ckpt/model.safetensors"), metadata={"format": "pt"})
    check_files("st_file", [d / "ckpt/model.safetensors"], full)
    write_expected(d, "st_file", "ckpt/model.safetensors", "safetensors", 1, full)


def shard_names(n):
    return ["model-%05d-of-%05d.safetensors" % (i + 1, n) for i in range(n)]


def case_st_repo(root):
    d = root / "st_repo"
    (d / "ckpt").mkdir(parents=True)
    full = model_tensors()
    names = shard_names(3)
    shards = [{} for _ in names]
    for i, (key, t) in enumerate(sorted(full.items())):
        shards[i % 3][key] = t
    weight_map, total = {}, 0
    for name, shard in zip(names, shards):
        save_file(shard, str(d / "ckpt" / name), metadata={"format": "pt"})
        for key, t in shard.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (d / "ckpt/model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    check_files("st_repo", [d / "ckpt" / n for n in names], full)
    write_expected(d, "st_repo", "ckpt", "hf-index", 1, full)


def case_st_dir(root):
    d = root / "st_dir"
    (d / "ckpt").mkdir(parents=True)
    full = dtype_tensors("a.")
    keys = sorted(full)
    save_file({k: full[k] for k in keys[::2]}, str(d / "ckpt/first.safetensors"))
    save_file({k: full[k] for k in keys[1::2]}, str(d / "ckpt/second.safetensors"))
    (d / "ckpt/README.md").write_text("not a checkpoint file\n")
    check_files("st_dir", [d / "ckpt/first.safetensors", d / "ckpt/second.safetensors"], full)
    write_expected(d, "st_dir", "ckpt", "hf-directory", 1, full)


def case_hf_1proc(root):
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    d = root / "hf_1proc"
    d.mkdir(parents=True)
    full = model_tensors()
    mapping = {k: 1 + i % 3 for i, k in enumerate(sorted(full))}
    dcp.save({k: v.clone() for k, v in full.items()},
             storage_writer=HuggingFaceStorageWriter(str(d / "ckpt"), fqn_to_index_mapping=mapping), no_dist=True)
    check_files("hf_1proc", sorted((d / "ckpt").glob("*.safetensors")), full)
    torch_hf_load(d / "ckpt", full)
    write_expected(d, "hf_1proc", "ckpt", "hf-index", 1, full)


# --------------------------------------------------------------------------------------
# multi-rank cases


def dist_state(world, mesh_1d, mesh_2d, floats_only):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    def dt(name, mesh, placements, *shape, dtype=torch.float32):
        return distribute_tensor(randn(torch, name, *shape, dtype=dtype), mesh, placements)

    sd = {
        "rows": dt("rows", mesh_1d, [Shard(0)], 10, 6),
        "cols": dt("cols", mesh_1d, [Shard(1)], 5, 10, dtype=torch.bfloat16),
        "few": dt("few", mesh_1d, [Shard(0)], 2, 3, dtype=torch.float64),  # empty shards
        "vec": dt("vec", mesh_1d, [Shard(0)], 37, dtype=torch.float16),
        "repl": dt("repl", mesh_1d, [Replicate()], 4, 3),
        "plain": randn(torch, "plain", 3, 3),
    }
    if not floats_only:  # torch's consolidation takes torch.finfo of every dtype
        sd["int"] = distribute_tensor(torch.arange(11) * -3, mesh_1d, [Shard(0)])
    if mesh_2d is not None:
        sd["grid"] = dt("grid", mesh_2d, [Shard(0), Shard(1)], 7, 9)
        sd["grid_t"] = dt("grid_t", mesh_2d, [Shard(1), Shard(0)], 6, 8, dtype=torch.bfloat16)
    return sd


def _rank_main(rank, port, root, world, cases):
    import logging
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)
    logging.getLogger("torch.distributed.checkpoint").setLevel(logging.ERROR)
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))
    try:
        mesh_1d = init_device_mesh("cpu", (world,))
        mesh_2d = init_device_mesh("cpu", (2, 2)) if world == 4 else None
        for case, consolidate in cases:
            sd = dist_state(world, mesh_1d, mesh_2d, consolidate)
            full = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for k, v in sd.items()}
            keys = sorted(sd)
            mapping = {k: 1 + i % 2 for i, k in enumerate(keys)} if consolidate else None
            writer = HuggingFaceStorageWriter(str(Path(root) / case / "ckpt"), fqn_to_index_mapping=mapping,
                                              save_distributed=True, enable_consolidation=consolidate)
            dcp.save(sd, storage_writer=writer)
            if rank == 0:
                torch.save(full, str(Path(root) / case / "full.pt"))
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(root, world, cases):
    import torch.distributed.device_mesh  # noqa: F401
    import torch.distributed.tensor  # noqa: F401
    import torch.multiprocessing as mp
    for case, _ in cases:
        (root / case).mkdir(parents=True)
    mp.start_processes(_rank_main, args=(_free_port(), str(root), world, cases), nprocs=world, join=True,
                       start_method=os.environ.get("DCPP_MP_START", "fork"))


def pieces_of(files):
    """Every piece of the rank files placed at its DCP_SHARDING_INFO offsets."""
    pieces = {}
    for f in files:
        _, _, header = read_header(f)
        info = json.loads(header["__metadata__"]["DCP_SHARDING_INFO"])
        for key, (dtype, shape, data) in raw_tensors(f).items():
            pieces.setdefault(key, []).append((info[key]["saved_offsets"], dtype, shape, data))
    return pieces


def check_rank_files(what, files, full):
    """The rank files' pieces, placed at their offsets, cover exactly the saved values."""
    for key, ps in pieces_of(files).items():
        t = full[key]
        got = torch.zeros_like(t)
        covered = torch.zeros(t.shape, dtype=torch.int32)
        for offsets, dtype, shape, data in ps:
            if dtype != t.dtype:
                raise CaseError("%s: %s: piece of %s" % (what, key, dtype))
            piece = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape) if data \
                else torch.empty(shape, dtype=dtype)
            index = tuple(slice(o, o + s) for o, s in zip(offsets, shape))
            got[index] = piece
            covered[index] += 1
        if not bool((covered == 1).all()):
            raise CaseError("%s: %s: pieces do not tile the tensor" % (what, key))
        check_same(what, key, tensor_bytes(got), t)


def finish_dist_case(root, case, world, consolidate):
    d = root / case
    full = torch.load(str(d / "full.pt"))
    (d / "full.pt").unlink()
    rank_dir = d / "ckpt" / "sharded" if consolidate else d / "ckpt"
    rank_files = sorted(rank_dir.glob("*.safetensors"))
    if len(rank_files) != world * (2 if consolidate else 1):  # a file per rank and index
        raise CaseError("%s: %d rank files" % (case, len(rank_files)))
    check_rank_files(case, rank_files, full)
    if consolidate:
        check_files(case, sorted((d / "ckpt").glob("*.safetensors")), full)
        torch_hf_load(d / "ckpt", full)
        write_expected(d, case, "ckpt", "hf-index", world, full)
        s = root / (case + "_sharded")
        s.mkdir()
        write_expected(s, case + "_sharded", "../%s/ckpt/sharded" % case, "hf-sharded", world, full)
    else:
        torch_hf_load(d / "ckpt", full)
        write_expected(d, case, "ckpt", "hf-sharded", world, full)


def make_all(root):
    case_st_file(root)
    case_st_repo(root)
    case_st_dir(root)
    case_hf_1proc(root)
    run_ranks(root, 2, [("hf_2ranks", False)])
    finish_dist_case(root, "hf_2ranks", 2, False)
    run_ranks(root, 4, [("hf_4ranks", False), ("hf_4ranks_cons", True)])
    finish_dist_case(root, "hf_4ranks", 4, False)
    finish_dist_case(root, "hf_4ranks_cons", 4, True)


# --------------------------------------------------------------------------------------
# hostile model directories


def st_bytes(entries, metadata=None, pad=True):
    """A safetensors file from (key, code, shape, data_offsets, raw) entries, written by hand so
    that anything can be wrong. Returns (bytes, {key: file offset of the key's quote})."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for key, code, shape, offsets, payload in entries:
        header[key] = {"dtype": code, "shape": shape, "data_offsets": offsets}
        data += payload
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    where = {}
    for key, *_ in entries:
        where[key] = 8 + text.index(json.dumps(key).encode() + b":{")
    return struct.pack("<Q", len(text)) + text + data, where


def f32(n, seed):
    return tensor_bytes(randn(torch, "h%d" % seed, n))


def sharded_file(pieces):
    """(bytes, offsets of keys) of a rank file: pieces = [(key, saved_offsets, shape)] of F32."""
    entries, pos, info = [], 0, {}
    for key, offsets, shape in pieces:
        n = 1
        for s in shape:
            n *= s
        entries.append((key, "F32", shape, [pos, pos + 4 * n], f32(n, len(entries))))
        pos += 4 * n
        info[key] = {"saved_offsets": offsets}
    return st_bytes(entries, {"DCP_SHARDING_INFO": json.dumps(info), "DCP_VERSION": "1.0", "format": "pt"})


def make_hostile(root):
    cases = []

    def add(name, path, file, key, byte, words):
        cases.append({"name": name, "path": path, "file": file, "key": key, "byte": byte, "words": words})

    def write(name, files):
        d = root / name
        d.mkdir(parents=True)
        for fname, content in files.items():
            (d / fname).write_bytes(content if isinstance(content, bytes) else content.encode())
        return d

    good, at = st_bytes([("a", "F32", [4], [0, 16], f32(4, 1)), ("b", "F32", [2], [16, 24], f32(2, 2))])

    def index(weight_map):
        text = json.dumps({"metadata": {"total_size": 24}, "weight_map": weight_map}, indent=2)
        return text, {k: text.index(json.dumps(k) + ":") for k in weight_map}

    text, where = index({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})
    write("index_missing_file", {"model.safetensors.index.json": text, "model-00001-of-00002.safetensors": good})
    add("index_missing_file", "index_missing_file", "model.safetensors.index.json", "b", where["b"], "missing")

    text, where = index({"a": "model.safetensors", "b": "../outside.safetensors"})
    write("index_traversal", {"model.safetensors.index.json": text, "model.safetensors": good})
    (root / "outside.safetensors").write_bytes(good)
    add("index_traversal", "index_traversal", "model.safetensors.index.json", "b", where["b"], "not a file name")

    text, where = index({"a": "model.safetensors", "b": "/etc/passwd"})
    write("index_absolute", {"model.safetensors.index.json": text, "model.safetensors": good})
    add("index_absolute", "index_absolute", "model.safetensors.index.json", "b", where["b"], "not a file name")

    text, where = index({"a": "model.safetensors", "b": "model.safetensors", "c": "model.safetensors"})
    write("index_key_not_in_file", {"model.safetensors.index.json": text, "model.safetensors": good})
    add("index_key_not_in_file", "index_key_not_in_file", "model.safetensors.index.json", "c", where["c"],
        "does not hold it")

    text, where = index({"a": "model.safetensors"})
    write("file_key_not_in_index", {"model.safetensors.index.json": text, "model.safetensors": good})
    add("file_key_not_in_index", "file_key_not_in_index", "model.safetensors", "b", at["b"], "does not list")

    other, other_at = st_bytes([("b", "F32", [2], [0, 8], f32(2, 3))])
    write("key_in_two_files", {"one.safetensors": good, "two.safetensors": other})
    add("key_in_two_files", "key_in_two_files", "two.safetensors", "b", other_at["b"], "too")

    r0, _ = sharded_file([("w", [0, 0], [4, 3])])
    r1, r1_at = sharded_file([("w", [2, 0], [4, 3])])
    write("sharding_overlap", {"shard-00001-model-00001-of-00001.safetensors": r0,
                               "shard-00002-model-00001-of-00001.safetensors": r1})
    add("sharding_overlap", "sharding_overlap", "shard-00002-model-00001-of-00001.safetensors", "w", r1_at["w"],
        "overlaps")

    r0, r0_at = sharded_file([("w", [0, 0], [2, 3])])
    r1, _ = sharded_file([("w", [4, 0], [2, 3])])
    write("sharding_hole", {"shard-00001-model-00001-of-00001.safetensors": r0,
                            "shard-00002-model-00001-of-00001.safetensors": r1})
    add("sharding_hole", "sharding_hole", "shard-00001-model-00001-of-00001.safetensors", "w", r0_at["w"],
        "cover 12 of the tensor's 18")

    r0, r0_at = sharded_file([("w", [0, 0], [2, 3]), ("v", [0], [2])])
    r0_missing, _ = st_bytes([("w", "F32", [2, 3], [0, 24], f32(6, 4)), ("v", "F32", [2], [24, 32], f32(2, 5))],
                             {"DCP_SHARDING_INFO": json.dumps({"w": {"saved_offsets": [0, 0]}})})
    missing_at = 8 + r0_missing[8:].index(b'"v":{')
    write("sharding_info_lacks_key", {"shard-00001.safetensors": r0_missing})
    add("sharding_info_lacks_key", "sharding_info_lacks_key", "shard-00001.safetensors", "v", missing_at,
        "no saved_offsets")

    # The existing header cases, as model files.
    bad, bad_at = st_bytes([("a", "F32", [4], [0, 16], f32(4, 1)), ("b", "F32", [2], [16, 28], f32(3, 2))])
    write("header_wrong_size", {"model.safetensors": bad})
    add("header_wrong_size", "header_wrong_size/model.safetensors", "model.safetensors", "b", bad_at["b"],
        "needs 8")
    bad, bad_at = st_bytes([("a", "F32", [4], [0, 16], f32(4, 1)), ("b", "F32", [2], [16, 24], b"")])
    write("header_past_data", {"model.safetensors": bad})
    add("header_past_data", "header_past_data", "model.safetensors", "b", bad_at["b"], "outside the data section")
    bad, bad_at = st_bytes([("a", "F32", [4], [0, 16], f32(4, 1)), ("b", "F32", [2], [8, 16], b"")])
    write("header_overlap", {"model.safetensors": bad})
    add("header_overlap", "header_overlap", "model.safetensors", "b", bad_at["b"], "overlap")
    bad, bad_at = st_bytes([("a", "F32", [4], [0, 16], f32(4, 1)), ("f4", "F4", [4], [16, 18], b"\0\0")])
    write("header_f4", {"model.safetensors": bad})
    add("header_f4", "header_f4", "model.safetensors", "f4", bad_at["f4"] + len(b'"f4":{"dtype":'), "'F4'")
    whole = bytearray(good)
    whole[0:8] = struct.pack("<Q", 10**9)
    write("header_length", {"model.safetensors": bytes(whole)})
    add("header_length", "header_length", "model.safetensors", None, 0, "header length")

    (root / "hostile.json").write_text(json.dumps(cases, indent=1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--hostile")
    a = p.parse_args()
    try:
        if a.out:
            make_all(Path(a.out))
        if a.hostile:
            make_hostile(Path(a.hostile))
    except CaseError as e:
        print("make_hf.py: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
