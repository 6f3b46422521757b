#!/usr/bin/python3
"""Write a real PyTorch 1.13 DCP checkpoint plus the values it must load to.

Usage (Debian's torch 1.13 lives in the system Python, so use /usr/bin/python3):

    /usr/bin/python3 tests/python/make_checkpoint.py --case NAME --out DIR [--size-mb N]
                     [--world-size W] [--single-file-per-rank]

Writes DIR/ckpt/ (the checkpoint, written by torch.distributed._shard.checkpoint
.save_state_dict + FileSystemWriter), DIR/expected.json and DIR/expected/<key>.bin, in the
schema tests/python/README.md describes ("format": "torch-1.13", "planner_data": null), and
DIR/metadata.json (metadata_json.py's document: what `dcpp inspect --json` must print).
Existing DIR/ckpt, DIR/expected and DIR/expected.json are replaced; nothing else in DIR is
touched. Quiet on success (except `bench`, which prints one timing line); on failure prints a
message to stderr and exits 1.

Every value in expected.json comes from what torch wrote and read back: chunk positions from
FileSystemReader.read_metadata() (torch's own unpickling of .metadata), dtype/shape/
requires_grad from the TensorStorageMetadata, and tensor bytes from the tensors that were
saved (the unsharded value for sharded cases), after checking that they are bit-identical to
what load_state_dict(no_dist=True) returns when loading into full-shape tensors.

Cases: flat_dtypes, single_file, sharded_4ranks, optimizer, example, bench (see CASES).
"""

import argparse
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dcp113  # noqa: E402  (applies the Python 3.11 dataclasses fix before torch DCP)
from dcp113 import dcp, dist, torch  # noqa: E402

from expected_common import (  # noqa: E402
    BF16_BITS, F16_BITS, F32_BITS, F64_BITS, generator, ints, name_seed, randn, with_bits)
from expected_json import CaseError, build_expected  # noqa: E402


# --------------------------------------------------------------------------------------
# value helpers


def _gen(seed):
    return generator(torch, seed)


def _randn(name, *shape, dtype=torch.float32):
    return randn(torch, name, *shape, dtype=dtype)


def _with_bits(t, int_dtype, bits, patterns):
    return with_bits(torch, t, int_dtype, bits, patterns)


def _complex(name, n, dtype, fdtype, idtype, bits, patterns):
    re = _with_bits(_randn(name + ".re", n, dtype=fdtype), idtype, bits, patterns)
    im = _with_bits(_randn(name + ".im", n, dtype=fdtype), idtype, bits, list(reversed(patterns)))
    out = torch.complex(re, im)
    assert out.dtype == dtype
    return out


def _ints(name, dtype, lo, hi, n, extremes):
    return ints(torch, name, dtype, lo, hi, n, extremes)


# --------------------------------------------------------------------------------------
# cases: each returns (state_dict to save, reference values {fqn: full tensor | object})

UNICODE_KEY = "ünïcödé.wéights.日本語.🚀"
LONG_KEY = "long." + ".".join(["segment%02d" % i for i in range(30)]) + ".weight"  # > 255 bytes


def case_flat_dtypes():
    base_t = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    base_s = torch.arange(100, 160, dtype=torch.float32).reshape(6, 10)
    sd = {
        "w.fp32": _with_bits(_randn("w.fp32", 17, 33), torch.int32, 32, F32_BITS),
        "w.fp64": _with_bits(_randn("w.fp64", 3, 5, dtype=torch.float64), torch.int64, 64,
                             F64_BITS),
        "w.fp16": _with_bits(_randn("w.fp16", 4, 4, 4, dtype=torch.float16), torch.int16, 16,
                             F16_BITS),
        "w.bf16": _with_bits(_randn("w.bf16", 6, 7, dtype=torch.bfloat16), torch.int16, 16,
                             BF16_BITS),
        "i.int8": torch.arange(-128, 128, dtype=torch.int16).to(torch.int8).reshape(16, 16),
        "i.uint8": torch.arange(0, 256, dtype=torch.int16).to(torch.uint8),
        "i.int16": _ints("i.int16", torch.int16, -32768, 32768, 40,
                         [-32768, 32767, 0, -1, 1, 256, -256]).reshape(5, 8),
        "i.int32": _ints("i.int32", torch.int32, -2**31, 2**31, 24,
                         [-2**31, 2**31 - 1, 0, -1, 1, 65536]),
        "i.int64": _ints("i.int64", torch.int64, -2**62, 2**62, 10,
                         [-2**63, 2**63 - 1, 0, -1, 1, 2**32, -2**32]),
        "b.bool": torch.rand(5, 7, generator=_gen(5)) > 0.5,
        "c.complex64": _complex("c.complex64", 9, torch.complex64, torch.float32, torch.int32,
                                32, [0x80000000, 0x7F800000, 0x7FC00001, 0x00000001]),
        "c.complex128": _complex("c.complex128", 7, torch.complex128, torch.float64,
                                 torch.int64, 64, [0x8000000000000000, 0xFFF0000000000000,
                                                   0x7FF8000000000001]),
        "s.scalar": torch.tensor(2.718281828, dtype=torch.float32),
        "s.step": torch.tensor(1000, dtype=torch.int64),
        "e.empty": torch.zeros(0, 4),
        # 10x6 view of a 6x10 tensor: strides (1, 10), storage == numel, so saved as is.
        "n.transposed": base_t.t(),
        # 6x5 view into a 6x10 storage: DCP's _trim clones it (storage != numel).
        "n.slice": base_s[:, 2:7],
        # stride-0 view: storage (3) != numel (12), cloned by _trim
        "n.expanded": torch.tensor([1.0, -2.0, 3.5]).expand(4, 3),
        "n.channels_last": _randn("n.channels_last", 2, 3, 4, 5).contiguous(
            memory_format=torch.channels_last),
        "p.requires_grad": _randn("p.requires_grad", 4, 3).requires_grad_(True),
        "big.vector": _randn("big.vector", 100000),
        "model.layers.0.weight": _randn("model.layers.0.weight", 8, 4),
        "model.layers.1.weight": _randn("model.layers.1.weight", 3, 8),
        UNICODE_KEY: _randn(UNICODE_KEY, 3),
        LONG_KEY: _randn(LONG_KEY, 2, 2),
        "obj.int": -7,
        "obj.str": "héllo, wörld ✓ 🚀",
        "obj.float": 0.1,
        "obj.none": None,
        "obj.bool": True,
        "obj.list_int": [1, 2, 3, -4, 1 << 40],
        "obj.nested": {"lr": 0.001, "name": "adam", "flags": {"amsgrad": False, "foreach": None},
                       "sizes": [3, 4], "betas": (0.9, 0.999)},
        "obj.tuple": (1, "two", 3.0, None),
    }
    assert len(LONG_KEY.encode()) > 255
    assert sd["n.transposed"].stride() == (1, 10)
    assert not sd["n.channels_last"].is_contiguous()
    return sd, dict(sd)


def case_single_file():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    sd = {
        "step": 7,
        "name": "run-α",
        "w.fp32": _randn("sf.w.fp32", 5, 7),
        "w.bf16": _with_bits(_randn("sf.w.bf16", 8, dtype=torch.bfloat16), torch.int16, 16,
                             BF16_BITS[:6]),
        "i.int64": torch.tensor([-2**63, 2**63 - 1, 42]),
        "n.transposed": base.t(),
        "s.scalar": torch.tensor(-0.5),
        "e.empty": torch.zeros(0, 2, dtype=torch.float64),
        "extra.tags": ["a", "b"],
    }
    return sd, dict(sd)


# sharded_4ranks: name -> (full shape, dtype, shard dim or None for replicated)
SHARDED_SPECS = {
    "rows.uneven": ((10, 7), torch.float32, 0),    # torch.chunk: 3,3,3,1
    "cols.even": ((5, 16), torch.float32, 1),      # 4,4,4,4 along dim 1
    "tiny.sparse": ((2, 3), torch.float64, 0),     # 1,1 and nothing on ranks 2,3
    "vec.120": ((120,), torch.float32, 0),         # 30 each
    "bf16.rows": ((9, 5), torch.bfloat16, 0),      # 3,3,3 and nothing on rank 3
    # 1,1 and explicit zero-size shards (0,3) at offset (2,0) on ranks 2 and 3: 1.13 records
    # both in TensorStorageMetadata.chunks (4 chunks, two identical) but storage_data keeps one
    # (same MetadataIndex; rank 3's write wins), and rank 2's __2_<n>.distcp is left orphaned.
    "zero.shards": ((2, 3), torch.float32, "0+empty"),
    "replicated.bias": ((13,), torch.float32, None),
}
SHARDED_OBJECTS = {"meta.step": 300, "meta.name": "sharded-4"}


def _chunk_layout(n, world):
    """torch.chunk split of n over world: list of (offset, size), empty chunks dropped."""
    split = math.ceil(n / world) if n else 0
    out = []
    for i in range(world):
        lo = min(n, split * i)
        hi = min(n, split * (i + 1))
        if hi > lo:
            out.append((lo, hi - lo))
    return out


def _sharded_full(name):
    shape, dtype, _ = SHARDED_SPECS[name]
    return _randn("sharded." + name, *shape, dtype=dtype)


def _make_sharded(full, dim, rank, world, pg=None, empty_shards=False):
    from torch.distributed._shard.metadata import ShardMetadata
    from torch.distributed._shard.sharded_tensor import Shard, init_from_local_shards
    layout = _chunk_layout(full.size(dim), world)
    if empty_shards:
        layout += [(full.size(dim), 0)] * (world - len(layout))
    shards = []
    if rank < len(layout):
        off, size = layout[rank]
        local = full.narrow(dim, off, size).clone()
        offsets = [0] * full.dim()
        offsets[dim] = off
        md = ShardMetadata(shard_offsets=offsets, shard_sizes=list(local.size()),
                           placement="rank:%d/cpu" % rank)
        shards.append(Shard(local, md))
    return init_from_local_shards(shards, *full.size(), process_group=pg)


def case_sharded_4ranks_rank(rank, world):
    sd = {}
    for name, (shape, dtype, dim) in SHARDED_SPECS.items():
        full = _sharded_full(name)
        if dim is None:
            sd[name] = full
        elif dim == "0+empty":
            sd[name] = _make_sharded(full, 0, rank, world, empty_shards=True)
        else:
            sd[name] = _make_sharded(full, dim, rank, world)
    sd.update(SHARDED_OBJECTS)
    return sd


def case_sharded_4ranks_reference():
    ref = {name: _sharded_full(name) for name in SHARDED_SPECS}
    ref.update(SHARDED_OBJECTS)
    return ref


def _model_and_optimizer(sizes, seed, steps):
    torch.manual_seed(seed)
    model = torch.nn.Module()
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        model.add_module("fc%d" % (i + 1), layers[-1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        x = torch.randn(5, sizes[0])
        for i, layer in enumerate(layers):
            x = layer(x)
            if i + 1 < len(layers):
                x = torch.relu(x)
        loss = (x ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def _flatten_model_and_optim(model, opt):
    """The hand-flattened layout 1.13 users wrote: model.<param>, optim.state.<param>.<k>,
    optim.param_groups as one BYTE_IO value (list of dicts with integer param ids)."""
    sd = {}
    names = {}
    for name, p in model.named_parameters():
        names[id(p)] = name
    for name, t in model.state_dict().items():
        sd["model." + name] = t
    osd = opt.state_dict()
    ids = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    for pid, state in osd["state"].items():
        for k, v in state.items():
            sd["optim.state.%s.%s" % (ids[pid], k)] = v
    sd["optim.param_groups"] = osd["param_groups"]
    return sd


def case_optimizer():
    model, opt = _model_and_optimizer([4, 8, 3], seed=0, steps=2)
    sd = _flatten_model_and_optim(model, opt)
    return sd, dict(sd)


def case_example():
    model, opt = _model_and_optimizer([6, 16, 4], seed=1234, steps=1)
    sd = _flatten_model_and_optim(model, opt)
    sd["train.epoch"] = 3
    sd["train.note"] = "dcpp tiny example"
    return sd, dict(sd)


def bench_specs(size_mb):
    """Deterministic list of (name, shape, dtype) totalling about size_mb MiB."""
    mib = 1 << 20
    budget = int(size_mb * mib)
    specs = []
    n_big = min(4, int(size_mb * 0.5) // 64)
    for i in range(n_big):
        specs.append(("big.%d.weight" % i, (16384, 1024), torch.float32))
        budget -= 64 * mib
    tiny = []
    for i in range(48):
        rows = [1, 2, 3, 5, 8, 13, 21, 34][i % 8]
        dtype = torch.bfloat16 if i % 3 == 0 else torch.float32
        tiny.append(("tiny.%d.bias" % i, (rows, 17 + i), dtype))
    tiny_bytes = sum(r * c * (2 if d == torch.bfloat16 else 4) for _, (r, c), d in tiny)
    budget -= tiny_bytes
    i = 0
    while budget >= mib:
        mb = min([1, 2, 3, 4, 5, 6, 7, 8][i % 8], budget // mib)
        if i % 3 == 2:
            specs.append(("mid.%d.weight" % i, (mb * 256, 2048), torch.bfloat16))
        else:
            specs.append(("mid.%d.weight" % i, (mb * 256, 1024), torch.float32))
        budget -= mb * mib
        i += 1
    return specs + tiny


def case_bench_rank(rank, world, size_mb):
    from torch.distributed._shard.metadata import ShardMetadata
    from torch.distributed._shard.sharded_tensor import Shard, init_from_local_shards
    sd = {}
    for name, shape, dtype in bench_specs(size_mb):
        layout = _chunk_layout(shape[0], world)
        shards = []
        if rank < len(layout):
            off, rows = layout[rank]
            g = _gen(name_seed(name) + rank)
            local = torch.empty(rows, shape[1], dtype=torch.float32).uniform_(-1, 1, generator=g)
            local = local.to(dtype)
            shards.append(Shard(local, ShardMetadata([off, 0], [rows, shape[1]],
                                                     "rank:%d/cpu" % rank)))
        sd[name] = init_from_local_shards(shards, *shape)
    sd["bench.size_mb"] = size_mb
    return sd


CASES = {
    "flat_dtypes": "one process (no_dist=True), default FileSystemWriter (one file per item): "
                   "float32/float64/float16/bfloat16 with NaN payloads, +-inf, -0.0, "
                   "subnormals; int8, uint8 0..255, int16/int32/int64 extremes, bool, "
                   "complex64, complex128, 0-dim float32 and int64, empty (0,4), a transposed "
                   "10x6 view saved with strides (1,10), a slice view base[:, 2:7] and a "
                   "stride-0 expanded view (both cloned by the writer), a channels-last 4-D "
                   "tensor (saved with channels-last strides), a requires_grad=True tensor, "
                   "a 100k-element vector, keys with dots, a non-ASCII+emoji key and a key "
                   "longer than 255 bytes; BYTE_IO objects: int, str, float, None, bool, list "
                   "of ints, nested dict, tuple",
    "single_file": "one process, FileSystemWriter(single_file_per_rank=True): all items in "
                   "__0_0.distcp (BYTE_IO items first, then tensors in state-dict order, "
                   "offsets > 0): float32, bfloat16 specials, int64 extremes, transposed view, "
                   "0-dim, empty float64 (0,2), objects int, str, list of str",
    "sharded_4ranks": "4 processes over Gloo, ShardedTensor (init_from_local_shards, "
                      "torch.chunk splits): rows.uneven 10x7 along dim 0 (3,3,3,1), cols.even "
                      "5x16 along dim 1 (4 each), tiny.sparse 2x3 float64 (two chunks, ranks "
                      "2 and 3 hold nothing), vec.120 (30 each), bf16.rows 9x5 (3,3,3, rank 3 "
                      "nothing), zero.shards 2x3 (1,1 plus explicit zero-size shards (0,3) at "
                      "offset (2,0) on ranks 2 and 3: two identical chunks in .metadata, one "
                      "storage_data entry (rank 3's), rank 2's file orphaned), a replicated plain tensor and BYTE_IO values (written by the "
                      "coordinator only); expected values are the unsharded tensors",
    "optimizer": "one process, a 4-8-3 MLP after two Adam steps, hand-flattened as 1.13 "
                 "users did: model.fc<i>.{weight,bias}, optim.state.<param>.{step (0-dim "
                 "float32), exp_avg, exp_avg_sq}, optim.param_groups as one BYTE_IO (list of "
                 "dicts, integer param ids)",
    "example": "one process, a 6-16-4 MLP after one Adam step (model.*, optim.state.*, "
               "optim.param_groups) plus BYTE_IO train.epoch and train.note",
    "bench": "W processes over Gloo (default 4), ShardedTensors split along dim 0 with "
             "torch.chunk: a few 64 MiB float32, many 1-8 MiB float32/bfloat16 and 48 tiny "
             "tensors (some with fewer rows than ranks), totalling about --size-mb MiB; no "
             "expected/*.bin and no sha256",
}


# --------------------------------------------------------------------------------------
# multi-process save


def _rank_entry(case, rank, world, init_file, ckpt, opts, queue):
    try:
        dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank,
                                world_size=world, timeout=timedelta(seconds=120))
        if case == "sharded_4ranks":
            sd = case_sharded_4ranks_rank(rank, world)
        elif case == "bench":
            sd = case_bench_rank(rank, world, opts["size_mb"])
        else:
            raise CaseError("no multi-rank case %r" % case)
        writer = dcp.FileSystemWriter(ckpt, single_file_per_rank=opts["single_file"])
        dist.barrier()
        t0 = time.perf_counter()
        dcp.save_state_dict(sd, writer)
        dist.barrier()
        t1 = time.perf_counter()
        if rank == 0:
            queue.put(("ok", t1 - t0))
        dist.destroy_process_group()
    except BaseException:
        queue.put(("error", "rank %d: %s" % (rank, traceback.format_exc())))
        queue.close()
        queue.join_thread()  # flush the message before the hard exit
        os._exit(1)


def run_multi_rank(case, world, ckpt, opts, timeout_s=600):
    # fork: the parent has only imported torch (no threads, no process group yet), and it
    # saves ~1 s of torch import per rank (10 s on a loaded 2-core machine) over spawn.
    # DCPP_MP_START=spawn switches back.
    ctx = multiprocessing.get_context(os.environ.get("DCPP_MP_START", "fork"))
    queue = ctx.Queue()
    tmp = tempfile.mkdtemp(prefix="dcp113-init-")
    init_file = os.path.join(tmp, "store")
    procs = [ctx.Process(target=_rank_entry,
                         args=(case, r, world, init_file, str(ckpt), opts, queue))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    msgs = []

    def drain(wait):
        try:
            while True:
                msgs.append(queue.get(timeout=wait))
                wait = 0.01
        except Exception:  # queue.Empty
            pass

    try:
        # drain while waiting, so no child blocks on a full pipe at exit
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            drain(0.2)
        alive = [p for p in procs if p.is_alive()]
        for p in alive:
            p.kill()
        for p in procs:
            p.join()
        drain(0.05)
        errors = [m[1] for m in msgs if m[0] == "error"]
        if errors:
            raise CaseError("multi-rank save failed:\n" + "\n".join(errors))
        if alive:
            raise CaseError("multi-rank save timed out after %d s" % timeout_s)
        bad = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode != 0]
        if bad:
            raise CaseError("ranks exited non-zero: %r" % bad)
        times = [m[1] for m in msgs if m[0] == "ok"]
        return times[0] if times else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------


def _clean(out):
    for p in (out / "ckpt", out / "expected", out / "metadata.json"):
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.exists():
            shutil.rmtree(p)
    if (out / "expected.json").exists():
        (out / "expected.json").unlink()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", required=True, choices=sorted(CASES))
    ap.add_argument("--out", required=True, help="output directory (DIR/ckpt, DIR/expected...)")
    ap.add_argument("--size-mb", type=float, default=256, help="bench: total MiB (default 256)")
    ap.add_argument("--world-size", type=int, default=4, help="bench: ranks (default 4)")
    ap.add_argument("--single-file-per-rank", action="store_true",
                    help="bench: FileSystemWriter(single_file_per_rank=True)")
    ap.add_argument("--time-load", action="store_true",
                    help="bench: also time torch 1.13 load_state_dict(no_dist=True) of the "
                         "whole checkpoint into full-shape tensors in this process")
    args = ap.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _clean(out)
    ckpt = out / "ckpt"
    case = args.case
    t0 = time.perf_counter()

    if case in ("flat_dtypes", "single_file", "optimizer", "example"):
        sd, ref = {"flat_dtypes": case_flat_dtypes, "single_file": case_single_file,
                   "optimizer": case_optimizer, "example": case_example}[case]()
        single = case == "single_file"
        dcp.save_state_dict(sd, dcp.FileSystemWriter(str(ckpt), single_file_per_rank=single),
                            no_dist=True)
        build_expected(case, out, ckpt, ref, 1, single, CASES[case])
    elif case == "sharded_4ranks":
        run_multi_rank(case, 4, ckpt, {"single_file": False})
        build_expected(case, out, ckpt, case_sharded_4ranks_reference(), 4, False, CASES[case])
    elif case == "bench":
        if args.size_mb <= 0 or args.world_size < 1:
            raise CaseError("--size-mb must be > 0 and --world-size >= 1")
        opts = {"single_file": args.single_file_per_rank, "size_mb": args.size_mb}
        save_s = run_multi_rank(case, args.world_size, ckpt, opts, timeout_s=3600)
        specs = bench_specs(args.size_mb)
        # shape/dtype-only references (meta tensors): bench writes no bytes to compare
        ref = {name: torch.empty(shape, dtype=dtype, device="meta")
               for name, shape, dtype in specs}
        ref["bench.size_mb"] = args.size_mb
        build_expected(case, out, ckpt, ref, args.world_size, args.single_file_per_rank,
                       CASES[case].replace("W processes", "%d processes" % args.world_size),
                       write_bins=False, verify_load=False)
        total = sum(math.prod(s) * torch.empty((), dtype=d).element_size() for _, s, d in specs)
        print("bench: %.1f MiB in %d tensors, %d ranks, single_file_per_rank=%s: "
              "save_state_dict %.3f s (%.2f GiB/s), total %.3f s" % (
                  total / 2**20, len(specs), args.world_size, args.single_file_per_rank,
                  save_s, total / 2**30 / save_s, time.perf_counter() - t0))
        if args.time_load:
            t1 = time.perf_counter()
            dcp113.load_full(ckpt)
            load_s = time.perf_counter() - t1
            print("bench: torch 1.13 load_state_dict(no_dist=True) into full tensors, "
                  "1 process: %.3f s (%.2f GiB/s)" % (load_s, total / 2**30 / load_s))
    else:  # pragma: no cover - argparse restricts choices
        raise CaseError("unknown case %r" % case)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (CaseError, OSError, RuntimeError, ValueError, KeyError, AssertionError) as e:
        print("make_checkpoint.py: error: %s" % e, file=sys.stderr)
        sys.exit(1)
