#!/usr/bin/env python3
"""Write real PyTorch 2.13 DCP checkpoints plus the values they must load to.

Usage (torch 2.13 lives in the repository's virtualenv, made by tools/install-deps):

    .venv/bin/python tests/python/make_checkpoint2x.py --out ROOT [--case NAME ...]

For every case named (default: all of them) writes ROOT/NAME/ckpt (the checkpoint, written by
torch.distributed.checkpoint.save with FileSystemWriter), ROOT/NAME/expected.json and
ROOT/NAME/expected/<key>.bin, in the schema tests/python/README.md describes (the schema of
make_checkpoint.py's 1.13 cases, with "format": "torch-2.x" and a "planner_data" dict), and
ROOT/NAME/metadata.json (metadata_json.py's document: what `dcpp inspect --json` must print).
Single-process cases run in this process; the 4-rank cases share one start of 4 Gloo
processes (torch.multiprocessing). Quiet on success; on failure prints a message to stderr
and exits 1.

Every value in expected.json comes from torch: chunk positions, dtypes, shapes, paths and
storage ranges from torch's own unpickling of .metadata (the real Metadata classes), tensor
bytes from the full values the ranks saved (DTensors gathered with full_tensor() on the ranks
themselves), after checking that torch's own dcp.load into full-shape tensors returns exactly
those bytes and objects.
"""

import argparse
import hashlib
import json
import math
import os
import pickle
import shutil
import socket
import sys
import warnings
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint._nested_dict import flatten_state_dict  # noqa: E402
from torch.distributed.checkpoint._traverse import get_element, set_element  # noqa: E402
from torch.distributed.checkpoint.metadata import (  # noqa: E402
    BytesStorageMetadata, MetadataIndex, TensorStorageMetadata)

from expected_common import (  # noqa: E402
    BF16_BITS, F16_BITS, F32_BITS, F64_BITS, CaseError, bin_name, generator, ints, name_seed, py_type,
    randn, same_object, to_json, with_bits)
from metadata_json import document as metadata_document  # noqa: E402

if sys.byteorder != "little":
    raise SystemExit("these scripts assume a little-endian host")

TORCH_VERSION = "2.13.0"
WORLD = 4

# --------------------------------------------------------------------------------------
# values


def _gen(seed):
    return generator(torch, seed)


def _randn(name, *shape, dtype=torch.float32):
    return randn(torch, name, *shape, dtype=dtype)


def _raw(name, dtype, *shape):
    """A tensor of `dtype` whose bytes are seeded random bytes (every bit pattern, NaNs too)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    n = math.prod(shape) * itemsize
    b = torch.randint(0, 256, (n,), generator=_gen(name_seed(name)), dtype=torch.int64).to(torch.uint8)
    return b.view(dtype).reshape(shape)


def _with_bits(t, int_dtype, bits, patterns):
    return with_bits(torch, t, int_dtype, bits, patterns)




def _ints(name, dtype, lo, hi, n, extremes):
    return ints(torch, name, dtype, lo, hi, n, extremes)


def _complex(name, n, dtype):
    part = torch.float32 if dtype == torch.complex64 else torch.float64
    out = torch.complex(_randn(name + ".re", n, dtype=part), _randn(name + ".im", n, dtype=part))
    assert out.dtype == dtype
    return out


UNICODE_KEY = "ünïcödé.wéights.日本語.🚀"
LONG_KEY = "long." + ".".join(["segment%02d" % i for i in range(30)]) + ".weight"  # > 255 bytes


def case_flat():
    base_t = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    base_s = torch.arange(100, 160, dtype=torch.float32).reshape(6, 10)
    sd = {
        "model": {
            "embed.weight": _randn("embed", 5, 4),  # a dict key with a dot: one path part
            "layers": [{"w": _randn("l0.w", 4, 4), "b": _randn("l0.b", 4)},
                       {"w": _randn("l1.w", 2, 4), "scale": 0.5}],
        },
        "w": {
            "fp32": _with_bits(_randn("w.fp32", 17, 33), torch.int32, 32, F32_BITS),
            "fp64": _with_bits(_randn("w.fp64", 3, 5, dtype=torch.float64), torch.int64, 64,
                               F64_BITS),
            "fp16": _with_bits(_randn("w.fp16", 4, 4, 4, dtype=torch.float16), torch.int16, 16,
                               F16_BITS),
            "bf16": _with_bits(_randn("w.bf16", 6, 7, dtype=torch.bfloat16), torch.int16, 16,
                               BF16_BITS),
        },
        "i": {
            "int8": torch.arange(-128, 128, dtype=torch.int16).to(torch.int8).reshape(16, 16),
            "uint8": torch.arange(0, 256, dtype=torch.int16).to(torch.uint8),
            "int16": _ints("i.int16", torch.int16, -32768, 32768, 40,
                           [-32768, 32767, 0, -1]).reshape(5, 8),
            "int32": _ints("i.int32", torch.int32, -2**31, 2**31, 24, [-2**31, 2**31 - 1]),
            "int64": _ints("i.int64", torch.int64, -2**62, 2**62, 10, [-2**63, 2**63 - 1]),
        },
        "b": {"bool": torch.rand(5, 7, generator=_gen(5)) > 0.5},
        "c": {"complex64": _complex("c64", 9, torch.complex64),
              "complex128": _complex("c128", 7, torch.complex128)},
        "s": {"scalar": torch.tensor(2.718281828), "step": torch.tensor(1000)},
        "e": {"empty": torch.zeros(0, 4), "empty3": torch.zeros(2, 0, 3, dtype=torch.int32)},
        "n": {
            "transposed": base_t.t(),            # strides (1, 10): saved as is
            "slice": base_s[:, 2:7],             # a view into a larger storage: cloned
            "rows": base_s[2:4],                 # contiguous, larger storage: cloned
            "expanded": torch.tensor([1.0, -2.0, 3.5]).expand(4, 3),
            "channels_last": _randn("cl", 2, 3, 4, 5).contiguous(
                memory_format=torch.channels_last),
        },
        "p": {"requires_grad": _randn("p.rg", 4, 3).requires_grad_(True)},
        "big": {"vector": _randn("big", 100000)},
        "mixed": [_randn("mixed.0", 3), 3, "x"],  # holds a tensor: descended by index
        "obj": {
            "int": -7, "str": "héllo, wörld ✓ 🚀", "float": 0.1, "none": None, "bool": True,
            "list": [1, 2, 3, -4, 1 << 40], "tuple": (1, "two", 3.0, None),
            "nested_list": [[1, 2], ["a"]],
            "dict_in_tuple": ({"lr": 0.001, "betas": (0.9, 0.999), "flags": {"amsgrad": False}},),
            "bytes": b"\x00\x01dcpp\xff\x80",
            "empty_bytes": b"",
        },
        "empty_dict": {},  # flattened away: not in the checkpoint
        UNICODE_KEY: _randn("unicode", 3),
        LONG_KEY: _randn("long", 2, 2),
    }
    assert sd["n"]["transposed"].stride() == (1, 10)
    return sd


def case_dtypes_v3():
    """The dtypes torch.save writes with _rebuild_tensor_v3 (no legacy storage class)."""
    t16 = _raw("u16.t", torch.uint16, 6, 4)
    return {
        "u": {"uint16": _raw("u16", torch.uint16, 3, 5), "uint32": _raw("u32", torch.uint32, 7),
              "uint64": _raw("u64", torch.uint64, 2, 3),
              "uint16_t": t16.t(), "uint16_0d": _raw("u16.0", torch.uint16),
              "uint32_empty": torch.zeros(0, 2, dtype=torch.uint32)},
        "f8": {"e4m3fn": _raw("e4m3fn", torch.float8_e4m3fn, 4, 4),
               "e5m2": _raw("e5m2", torch.float8_e5m2, 9),
               "e4m3fnuz": _raw("e4m3fnuz", torch.float8_e4m3fnuz, 3, 3),
               "e5m2fnuz": _raw("e5m2fnuz", torch.float8_e5m2fnuz, 5),
               "e8m0fnu": _raw("e8m0fnu", torch.float8_e8m0fnu, 2, 2)},
        "c": {"complex32": _raw("c32", torch.complex32, 3, 2)},
        "f32": _randn("v3.f32", 3),
    }


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 10)   # weight 10x6: 3,3,3,1 rows over 4 ranks
        self.fc2 = torch.nn.Linear(10, 2)   # weight 2x10: 1,1 and two empty shards
        self.ln = torch.nn.LayerNorm(2)

    def forward(self, x):
        return self.ln(self.fc2(torch.relu(self.fc1(x))))


def _train(model, steps, seed):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(steps):
        x = torch.randn(5, 6, generator=_gen(seed + i))
        loss = (model(x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def case_optim():
    from torch.distributed.checkpoint.state_dict import get_state_dict
    torch.manual_seed(0)
    model = Net()
    opt = _train(model, 2, 10)
    msd, osd = get_state_dict(model, opt)
    return {"model": msd, "optim": osd, "train": {"epoch": 3}}


def case_threads():
    sd = {"t%02d" % i: _randn("thr%d" % i, 3 + 7 * i, 5) for i in range(10)}
    sd["small"] = {"a": _randn("thr.a", 2), "b": torch.tensor(7)}
    sd["meta"] = {"epoch": 2, "name": "threads", "sizes": [1, 2]}
    return sd


def case_per_item():
    return {"w": _randn("pi.w", 4, 3), "b": _randn("pi.b", 3, dtype=torch.float64),
            "t": torch.arange(12, dtype=torch.int32).reshape(3, 4).t(),
            "z": torch.tensor(True), "cfg": {"lr": 0.5, "tags": ["a", "b"]}}


SINGLE = {
    "x2_flat": (case_flat, {},
                "one process, dcp.save without a process group: a nested dict with lists "
                "(int path parts), a dict key with a dot, float32/float64/float16/bfloat16 "
                "with special bit patterns, int8/uint8/int16/int32/int64 extremes, bool, "
                "complex64/complex128, 0-dim float32/int64, empty (0,4) and (2,0,3), a "
                "transposed view (saved with strides (1,10)), slices, a stride-0 expanded view, "
                "channels-last, requires_grad, a 100k vector, a unicode key, a key longer than "
                "255 bytes, a list holding a tensor and scalars, BYTE_IO int/str/float/None/"
                "bool/list/tuple/nested list/dict inside a tuple/bytes/empty bytes; an empty "
                "dict (flattened away)"),
    "x2_dtypes_v3": (case_dtypes_v3, {},
                     "one process: the dtypes torch.save writes with _rebuild_tensor_v3 and a "
                     "torch.storage.UntypedStorage: uint16/uint32/uint64 (2-D, transposed, "
                     "0-dim, empty), float8_e4m3fn/e5m2/e4m3fnuz/e5m2fnuz/e8m0fnu, complex32, "
                     "random bytes (every bit pattern); one float32 for contrast"),
    "x2_optim": (case_optim, {},
                 "one process: Linear(6,10)-Linear(10,2)-LayerNorm after two Adam steps, "
                 "get_state_dict(model, optimizer): model.*, optim.state.<fqn>.{step, exp_avg, "
                 "exp_avg_sq}, optim.param_groups.0.<field> (one BYTE_IO each)"),
    "x2_threads": (case_threads, {"thread_count": 4},
                   "one process, FileSystemWriter(thread_count=4): items spread over "
                   "__0_0..__0_3.distcp by size"),
    "x2_per_item": (case_per_item, {"single_file_per_rank": False},
                    "one process, FileSystemWriter(single_file_per_rank=False): one file per "
                    "item"),
}

MULTI = {
    "x2_fsdp_4ranks": "4 Gloo processes, 1-D mesh of 4: an FSDP2 (fully_shard) model after two "
                      "Adam steps with get_state_dict (DTensor Shard(0) parameters and optimizer "
                      "state: fc1 10 rows 3,3,3,1; fc2 2 rows 1,1,0,0; replicated 0-dim step), "
                      "distribute_tensor Shard(0) (uneven, fewer rows than ranks, bfloat16, "
                      "int64), Shard(1), Replicate(), plain tensors saved by every rank, BYTE_IO",
    "x2_2d_4ranks": "4 Gloo processes, 2x2 mesh (dp, tp): DTensors [Shard(0), Shard(1)] 7x9 "
                    "(uneven), [Shard(1), Shard(0)], [Shard(0), Shard(0)], [Replicate(), "
                    "Shard(1)] bfloat16, [Shard(0), Replicate()] float64, a plain tensor and "
                    "BYTE_IO",
}

CASES = list(SINGLE) + list(MULTI)

# --------------------------------------------------------------------------------------
# multi-rank save (torch.multiprocessing, Gloo over TCP on a free port)


def _full_value(v):
    from torch.distributed.tensor import DTensor
    if isinstance(v, DTensor):
        return v.full_tensor().detach().clone()
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, dict):
        return {k: _full_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_full_value(x) for x in v]
    return v


def _fsdp_state(mesh):
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    torch.manual_seed(0)
    model = Net()
    fully_shard(model, mesh=mesh)
    opt = _train(model, 2, 20)
    msd, osd = get_state_dict(model, opt)

    def dt(name, placements, *shape, dtype=torch.float32):
        return distribute_tensor(_randn("fsdp." + name, *shape, dtype=dtype), mesh, placements)

    return {
        "model": msd,
        "optim": osd,
        "dt": {"rows": dt("rows", [Shard(0)], 10, 6), "few": dt("few", [Shard(0)], 2, 3,
                                                               dtype=torch.float64),
               "cols": dt("cols", [Shard(1)], 5, 10), "bf16": dt("bf16", [Shard(0)], 9, 5,
                                                                 dtype=torch.bfloat16),
               "vec": dt("vec", [Shard(0)], 120), "repl": dt("repl", [Replicate()], 4, 3),
               "int": distribute_tensor(torch.arange(7) * -3, mesh, [Shard(0)])},
        "plain": {"bias": _randn("fsdp.bias", 13), "step": torch.tensor(42)},
        "train": {"step": 300, "tag": "fsdp-4"},
    }


def _2d_state(mesh):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    def dt(name, placements, *shape, dtype=torch.float32):
        return distribute_tensor(_randn("2d." + name, *shape, dtype=dtype), mesh, placements)

    return {
        "tp": {"s0s1": dt("s0s1", [Shard(0), Shard(1)], 7, 9),
               "s1s0": dt("s1s0", [Shard(1), Shard(0)], 6, 8),
               "s0s0": dt("s0s0", [Shard(0), Shard(0)], 10, 3),
               "rs1": dt("rs1", [Replicate(), Shard(1)], 4, 10, dtype=torch.bfloat16),
               "s0r": dt("s0r", [Shard(0), Replicate()], 5, 4, dtype=torch.float64)},
        "plain": _randn("2d.plain", 3, 3),
        "meta": {"mesh": [2, 2]},
    }


def _rank_main(rank, port, root, cases):
    import logging
    from torch.distributed.device_mesh import init_device_mesh
    # DTensor warns that two all_gathers are used for [Shard(0), Shard(0)]; keep the log quiet.
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=120))
    try:
        for case in cases:
            if case == "x2_fsdp_4ranks":
                sd = _fsdp_state(init_device_mesh("cpu", (WORLD,)))
            else:
                sd = _2d_state(init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp")))
            dcp.save(sd, checkpoint_id=str(Path(root) / case / "ckpt"))
            full = _full_value(sd)  # collective: every rank gathers, in the same order
            if rank == 0:
                torch.save(full, str(Path(root) / case / "full.pt"))
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_multi_rank(root, cases):
    # fork, before this process has run any tensor op (no threads, no process group): the
    # ranks inherit the imports below instead of paying them 4 times (a spawn of 4 ranks
    # took 20 s on the 2-core machine, fork 4 s). DCPP_MP_START=spawn switches back.
    import torch.distributed.checkpoint.state_dict  # noqa: F401
    import torch.distributed.device_mesh  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401
    import torch.distributed.tensor  # noqa: F401
    import torch.multiprocessing as mp
    mp.start_processes(_rank_main, args=(_free_port(), str(root), cases), nprocs=WORLD,
                       join=True, start_method=os.environ.get("DCPP_MP_START", "fork"))


# --------------------------------------------------------------------------------------
# expected.json from torch's own view of the checkpoint


def tensor_bytes(t):
    """Row-major little-endian bytes of any tensor (bool 0/1, complex (re, im) pairs)."""
    return t.detach().clone(memory_format=torch.contiguous_format).reshape(-1) \
        .view(torch.uint8).numpy().tobytes()


def read_metadata(ckpt):
    """The Metadata object exactly as torch unpickles it (FileSystemReader.read_metadata does
    this too, then sets storage_meta.load_id; plain pickle.load keeps the file's value)."""
    with open(Path(ckpt) / ".metadata", "rb") as f:
        return pickle.load(f)


def load_full(ckpt, md):
    """torch's dcp.load into full-shape tensors (no process group) along planner_data."""
    dest = {}
    for fqn, item in md.state_dict_metadata.items():
        if isinstance(item, TensorStorageMetadata):
            value = torch.zeros(item.size, dtype=item.properties.dtype)
        else:
            value = None
        set_element(dest, md.planner_data[fqn], value)
    dcp.load(dest, checkpoint_id=str(ckpt))
    return {fqn: get_element(dest, md.planner_data[fqn]) for fqn in md.state_dict_metadata}


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def build_expected(case, out, ckpt, reference, world, description, writer_args):
    md = read_metadata(ckpt)
    if type(md).__module__ != "torch.distributed.checkpoint.metadata":
        raise CaseError("Metadata class from %s" % type(md).__module__)
    flat, mapping = flatten_state_dict(reference)
    keys = list(md.state_dict_metadata)
    if set(keys) != set(flat):
        raise CaseError("metadata keys differ from the saved state dict: missing %r, extra %r"
                        % (sorted(set(flat) - set(keys)), sorted(set(keys) - set(flat))))
    if not isinstance(md.planner_data, dict) or set(md.planner_data) != set(keys):
        raise CaseError("planner_data does not map every key")
    loaded = load_full(ckpt, md)

    file_sizes = {}

    def storage(fqn, offsets):
        index = MetadataIndex(fqn, offsets) if offsets is not None else MetadataIndex(fqn)
        info = md.storage_data[index]
        if info.relative_path not in file_sizes:
            file_sizes[info.relative_path] = os.path.getsize(Path(ckpt) / info.relative_path)
        size = file_sizes[info.relative_path]
        if info.offset < 0 or info.length <= 0 or info.offset + info.length > size:
            raise CaseError("%r: byte range %d+%d outside %s (%d bytes)" % (
                fqn, info.offset, info.length, info.relative_path, size))
        if getattr(info, "transform_descriptors", None):
            raise CaseError("%r: unexpected transform_descriptors" % fqn)
        return {"file": info.relative_path, "byte_offset": info.offset,
                "byte_length": info.length}

    tensors, objects = {}, {}
    (out / "expected").mkdir(parents=True, exist_ok=True)
    for fqn in keys:
        item = md.state_dict_metadata[fqn]
        path = list(md.planner_data[fqn])
        if tuple(path) != tuple(mapping[fqn]):
            raise CaseError("%r: planner_data %r, flatten_state_dict says %r" % (
                fqn, path, mapping[fqn]))
        ref = flat[fqn]
        if isinstance(item, TensorStorageMetadata):
            dtype, size = item.properties.dtype, list(item.size)
            if not isinstance(ref, torch.Tensor) or ref.dtype != dtype or list(ref.shape) != size:
                raise CaseError("%r: metadata says %s %r, saved %r" % (fqn, dtype, size, ref))
            data = tensor_bytes(ref)
            if tensor_bytes(loaded[fqn]) != data:
                raise CaseError("%r: dcp.load returned different bytes" % fqn)
            entry = {
                "path": path, "dtype": _dtype_name(dtype), "shape": size,
                "nbytes": math.prod(size) * torch.empty((), dtype=dtype).element_size(),
                "sha256": hashlib.sha256(data).hexdigest(), "file": "expected/" + bin_name(fqn),
                "requires_grad": bool(item.properties.requires_grad), "chunks": []}
            if len(data) != entry["nbytes"]:
                raise CaseError("%r: %d bytes, expected %d" % (fqn, len(data), entry["nbytes"]))
            (out / entry["file"]).write_bytes(data)
            for chunk in item.chunks:
                c = {"offsets": list(chunk.offsets), "sizes": list(chunk.sizes)}
                c.update(storage(fqn, chunk.offsets))
                entry["chunks"].append(c)
            tensors[fqn] = entry
        elif isinstance(item, BytesStorageMetadata):
            if not same_object(ref, loaded[fqn]):
                raise CaseError("%r: dcp.load returned %r, saved %r" % (fqn, loaded[fqn], ref))
            st = {"offsets": None}
            st.update(storage(fqn, None))
            objects[fqn] = {"path": path, "py_type": py_type(ref), "repr": repr(ref),
                            "json": to_json(ref), "storage": [st]}
        else:
            raise CaseError("%r: unknown storage metadata %s" % (fqn, type(item).__name__))

    n_index = sum(len({tuple(c["offsets"]) for c in e["chunks"]}) for e in tensors.values())
    if n_index + len(objects) != len(md.storage_data):
        raise CaseError("storage_data has %d entries, metadata describes %d items" % (
            len(md.storage_data), n_index + len(objects)))
    sm = md.storage_meta
    doc = {
        "schema": 1,
        "case": case,
        "description": description,
        "format_followed": "real PyTorch %s (Python %d.%d): torch.distributed.checkpoint.save, "
                           "DefaultSavePlanner, FileSystemWriter(%s)" % (
                               torch.__version__, sys.version_info[0], sys.version_info[1],
                               ", ".join("%s=%r" % kv for kv in writer_args.items())),
        "format": "torch-2.x",
        "world_size": world,
        "metadata_version": md.version,
        "checkpoint_id": os.fspath(sm.checkpoint_id) if sm and sm.checkpoint_id else None,
        "save_id": sm.save_id if sm else None,
        "planner_data": {k: list(v) for k, v in md.planner_data.items()},
        "tensors": tensors,
        "objects": objects,
    }
    (out / "expected.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    (out / "metadata.json").write_text(json.dumps(metadata_document(str(ckpt)), indent=1) + "\n",
                                       encoding="utf-8")


def _check_files(case, ckpt):
    files = sorted(p.name for p in Path(ckpt).iterdir())
    if case == "x2_threads":
        want = [".metadata"] + ["__0_%d.distcp" % i for i in range(4)]
        if files != sorted(want):
            raise CaseError("thread_count=4 wrote %r" % files)
    elif case == "x2_per_item":
        n = len(read_metadata(ckpt).storage_data)
        if files != sorted([".metadata"] + ["__0_%d.distcp" % i for i in range(n)]):
            raise CaseError("single_file_per_rank=False wrote %r" % files)
    elif case in MULTI:
        if not all("__%d_0.distcp" % r in files for r in range(WORLD)):
            raise CaseError("4 ranks wrote %r" % files)


def _clean(out):
    for p in (out / "ckpt", out / "expected", out / "expected.json", out / "metadata.json",
              out / "full.pt"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="root directory; each case goes to ROOT/NAME")
    ap.add_argument("--case", action="append", choices=CASES,
                    help="a case to write (repeatable; default: every case)")
    args = ap.parse_args(argv)
    if not torch.__version__.startswith(TORCH_VERSION):
        raise CaseError("torch %s, expected %s" % (torch.__version__, TORCH_VERSION))
    root = Path(args.out).resolve()
    cases = args.case or CASES
    for case in cases:
        (root / case).mkdir(parents=True, exist_ok=True)
        _clean(root / case)

    multi = [c for c in cases if c in MULTI]
    if multi:
        run_multi_rank(root, multi)
    for case in cases:
        out = root / case
        ckpt = out / "ckpt"
        if case in SINGLE:
            make, writer_args, description = SINGLE[case]
            sd = make()
            dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(ckpt), **writer_args))
            reference, world = sd, 1
        else:
            description, writer_args, world = MULTI[case], {}, WORLD
            reference = torch.load(str(out / "full.pt"), weights_only=False)
            (out / "full.pt").unlink()
        _check_files(case, ckpt)
        build_expected(case, out, ckpt, reference, world, description, writer_args)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # noqa: BLE001 - one line for the test log, then exit 1
        msg = str(e).strip().splitlines()
        print("make_checkpoint2x.py: error: %s: %s" % (
            type(e).__name__, "\n".join(msg[-20:]) if msg else ""), file=sys.stderr)
        sys.exit(1)
