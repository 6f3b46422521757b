"""The dcp.optimizer suite's oracle (torch 2.13): sharded optimizer checkpoints and what torch's
own `load_sharded_optimizer_state_dict` gives on each rank.

    optim_oracle.py --out ROOT

Starts 4 Gloo ranks (fork) and writes two cases, each in ROOT/<case>/:

  fsdp  a small model trained 3 Adam steps under FSDP2 (`fully_shard` on a 4-rank CPU mesh);
        `dcp.save({"model": msd, "optim": osd})` of `get_state_dict`'s DTensor state.
        torch loads it back with the model's DTensor state dict (no DP group: every state
        tensor chunked along dim 0 over the world).
  2d    a 2 (dp) x 2 (tp) mesh: the same model trained 3 Adam steps on every rank, its
        parameters and Adam state saved as DTensors ([Shard(0), Shard(1)] / [Shard(0),
        Replicate()]); torch loads it with an FSDP1-style 2-D model state dict built by hand:
        per parameter a ShardedTensor over the TP group whose one local shard (this rank's TP
        slice, TP_DIM below) is a ShardedTensor over the DP group, chunked along dim 0.

Outputs per case: ckpt/ (the checkpoint), full.json + full/*.bin (every optimizer entry in
full: tensors as row-major bytes, objects in expected_common.to_json form), oracle/rank<R>.json
+ oracle/*.bin (rank R's result of torch's loader, flattened by joining the nested keys with
'.': ShardedTensors as {"kind": "sharded", "size", "placements", "shards": [{"offsets",
"sizes", "bin"}]}, plain tensors as {"kind": "tensor", "shape", "bin"}, objects as {"kind":
"object", "json"}), and layout.json (the 2d case's TP slices: fqn -> [tp_dim]).
Quiet on success; exit 1 with a message on failure.
"""
import argparse
import json
import logging
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from expected_common import to_json  # noqa: E402

WORLD = 4
STEPS = 3
# The 2d case's tensor-parallel split of each parameter (dim of the TP slice).
TP_DIM = {"fc1.weight": 0, "fc1.bias": 0, "fc2.weight": 1, "fc2.bias": 0, "ln.weight": 0,
          "ln.bias": 0}


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 10)   # weight 10x6: rows 3,3,3,1 over 4 ranks
        self.fc2 = torch.nn.Linear(10, 3)   # weight 3x10: 1,1,1 and an empty shard
        self.ln = torch.nn.LayerNorm(3)     # 3: TP slices of 2 and 1 rows, the 1 split 1,0

    def forward(self, x):
        return self.ln(self.fc2(torch.relu(self.fc1(x))))


def _train(model):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(STEPS):
        g = torch.Generator().manual_seed(100 + i)
        x = torch.randn(5, 6, generator=g)
        loss = (model(x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def _bytes(t):
    return t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def _leaves(value, prefix=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, prefix + (str(k),))
    elif isinstance(value, list) and any(isinstance(v, (dict, list, torch.Tensor)) for v in value):
        for i, v in enumerate(value):
            yield from _leaves(v, prefix + (str(i),))
    else:
        yield ".".join(prefix), value


def _dump_result(result, out, rank):
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    out.mkdir(parents=True, exist_ok=True)
    doc = {}
    for n, (fqn, v) in enumerate(_leaves(result)):
        if isinstance(v, ShardedTensor):
            shards = []
            for i, s in enumerate(v.local_shards()):
                name = "r%d_%d_%d.bin" % (rank, n, i)
                (out / name).write_bytes(_bytes(s.tensor))
                shards.append({"offsets": list(s.metadata.shard_offsets),
                               "sizes": list(s.metadata.shard_sizes), "bin": name})
            doc[fqn] = {"kind": "sharded", "size": list(v.size()),
                        "placements": [str(m.placement) for m in v.metadata().shards_metadata],
                        "shards": shards}
        elif isinstance(v, torch.Tensor):
            name = "r%d_%d.bin" % (rank, n)
            (out / name).write_bytes(_bytes(v))
            doc[fqn] = {"kind": "tensor", "shape": list(v.shape), "bin": name}
        else:
            doc[fqn] = {"kind": "object", "json": to_json(v)}
    (out / ("rank%d.json" % rank)).write_text(json.dumps(doc, indent=1))


def _dump_full(osd, out):
    from torch.distributed.tensor import DTensor
    (out / "full").mkdir(parents=True, exist_ok=True)
    doc = {}
    for n, (fqn, v) in enumerate(_leaves({"optim": osd})):
        if isinstance(v, DTensor):
            v = v.full_tensor()  # collective: every rank calls it in the same order
        if isinstance(v, torch.Tensor):
            name = "%d.bin" % n
            (out / "full" / name).write_bytes(_bytes(v))
            doc[fqn] = {"kind": "tensor", "shape": list(v.shape), "dtype": str(v.dtype), "bin": name}
        else:
            doc[fqn] = {"kind": "object", "json": to_json(v)}
    return doc


def _fsdp_case(root, rank):
    from torch.distributed.checkpoint.optimizer import load_sharded_optimizer_state_dict
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    out = root / "fsdp"
    torch.manual_seed(0)
    model = Net()
    fully_shard(model, mesh=init_device_mesh("cpu", (WORLD,)))
    opt = _train(model)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(out / "ckpt"))
    full = _dump_full(osd, out)
    if rank == 0:
        (out / "full.json").write_text(json.dumps(full, indent=1))
    dist.barrier()
    result = load_sharded_optimizer_state_dict(msd, "optim", dcp.FileSystemReader(str(out / "ckpt")))
    _dump_result(result, out / "oracle", rank)


def _nested_param(full, tp_dim, tp_pg, dp_pg):
    """FSDP1's 2-D parameter: a ShardedTensor over the TP group whose one local shard (this
    rank's TP slice along tp_dim) is a ShardedTensor over the DP group, chunked along dim 0."""
    from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
    from torch.distributed._shard.sharded_tensor.metadata import (ShardedTensorMetadata,
                                                                  TensorProperties)
    from torch.distributed._shard.sharding_spec import ChunkShardingSpec, ShardMetadata
    tp, dp = dist.get_rank(tp_pg), dist.get_rank(dp_pg)
    props = TensorProperties(dtype=full.dtype)
    # ShardedTensor placements name global ranks (FSDP1's _create_chunk_sharded_tensor too).
    tp_ranks, dp_ranks = dist.get_process_group_ranks(tp_pg), dist.get_process_group_ranks(dp_pg)
    outer = ChunkShardingSpec(dim=tp_dim, placements=["rank:%d/cpu" % r for r in tp_ranks])
    outer_md = outer.build_metadata(full.shape, props)
    tp_md = outer_md.shards_metadata[tp]
    tp_slice = full
    for d, (o, s) in enumerate(zip(tp_md.shard_offsets, tp_md.shard_sizes)):
        tp_slice = tp_slice.narrow(d, o, s)
    inner = ChunkShardingSpec(dim=0, placements=["rank:%d/cpu" % r for r in dp_ranks])
    inner_md = inner.build_metadata(tp_slice.shape, props)
    dp_md = inner_md.shards_metadata[dp]
    piece = tp_slice.narrow(0, min(dp_md.shard_offsets[0], tp_slice.shape[0]), dp_md.shard_sizes[0])
    inner_st = ShardedTensor._init_from_local_shards_and_global_metadata(
        [Shard(tensor=piece.clone(), metadata=dp_md)], inner_md, process_group=dp_pg)
    return ShardedTensor._init_from_local_shards_and_global_metadata(
        [Shard(tensor=inner_st, metadata=ShardMetadata(tp_md.shard_offsets, tp_md.shard_sizes,
                                                       tp_md.placement))],
        ShardedTensorMetadata(outer_md.shards_metadata, full.shape, props), process_group=tp_pg)


def _2d_case(root, rank):
    from torch.distributed.checkpoint.optimizer import load_sharded_optimizer_state_dict
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    out = root / "2d"
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    torch.manual_seed(1)
    model = Net()
    opt = _train(model)  # the same on every rank
    msd, osd = get_state_dict(model, opt)

    def shard(t):
        if t.dim() == 0:
            return t
        placements = [Shard(0), Shard(1)] if t.dim() == 2 else [Shard(0), Replicate()]
        return distribute_tensor(t, mesh, placements)

    saved_osd = {"state": {p: {k: shard(v) for k, v in s.items()} for p, s in osd["state"].items()},
                 "param_groups": osd["param_groups"]}
    dcp.save({"model": {k: shard(v) for k, v in msd.items()}, "optim": saved_osd},
             checkpoint_id=str(out / "ckpt"))
    if rank == 0:
        (out / "full.json").write_text(json.dumps(_dump_full(osd, out), indent=1))
        (out / "layout.json").write_text(json.dumps(TP_DIM))
    # Groups: rank = 2 * dp + tp. Every rank creates every group, in the same order.
    tp_groups = [dist.new_group([2 * d, 2 * d + 1]) for d in range(2)]
    dp_groups = [dist.new_group([t, t + 2]) for t in range(2)]
    tp_pg, dp_pg = tp_groups[rank // 2], dp_groups[rank % 2]
    model_sd = {k: _nested_param(v, TP_DIM[k], tp_pg, dp_pg) for k, v in msd.items()}
    dist.barrier()
    try:
        result = load_sharded_optimizer_state_dict(model_sd, "optim",
                                                   dcp.FileSystemReader(str(out / "ckpt")))
        _dump_result(result, out / "oracle", rank)
    except ValueError as e:
        # torch 2.13 fails here on every rank before any collective: its DP sharding spec
        # places shards on group ranks ("rank:{i}" for i < dp size) where ShardedTensor wants
        # global ranks ("Global rank 0 does not exist in input process group: [1, 3]"). The
        # expected result is then what it means to build, made here by hand.
        (out / "oracle").mkdir(parents=True, exist_ok=True)
        if rank == 0:
            (out / "oracle" / "torch_error.txt").write_text(str(e) + "\n")
        _dump_expected_2d(osd, out / "oracle", rank, dist.get_rank(tp_pg), dist.get_rank(dp_pg))


def _dump_expected_2d(osd, out, rank, tp, dp):
    """What load_sharded_optimizer_state_dict means to return on a 2 x 2 mesh: a state tensor
    of one element whole; any other one, its parameter's TP slice (TP_DIM, torch.chunk rule)
    chunked along dim 0 over the 2 DP ranks, this rank's chunk in TP-slice coordinates."""
    from torch.distributed._shard.sharding_spec import ChunkShardingSpec
    from torch.distributed._shard.sharded_tensor.metadata import TensorProperties
    doc = {}
    for n, (fqn, v) in enumerate(_leaves({"optim": osd})):
        if not isinstance(v, torch.Tensor):
            doc[fqn] = {"kind": "object", "json": to_json(v)}
            continue
        if v.numel() == 1:
            name = "r%d_%d.bin" % (rank, n)
            (out / name).write_bytes(_bytes(v))
            doc[fqn] = {"kind": "tensor", "shape": list(v.shape), "bin": name}
            continue
        param = fqn.split(".", 2)[2].rsplit(".", 1)[0]
        props = TensorProperties(dtype=v.dtype)
        tp_md = ChunkShardingSpec(dim=TP_DIM[param], placements=["rank:0/cpu", "rank:1/cpu"]) \
            .build_metadata(v.shape, props).shards_metadata[tp]
        tp_slice = v
        for d, (o, s) in enumerate(zip(tp_md.shard_offsets, tp_md.shard_sizes)):
            tp_slice = tp_slice.narrow(d, o, s)
        dp_spec = ChunkShardingSpec(dim=0, placements=["rank:0/cpu", "rank:1/cpu"])
        dp_mds = dp_spec.build_metadata(tp_slice.shape, props).shards_metadata
        m = dp_mds[dp]
        piece = tp_slice.narrow(0, min(m.shard_offsets[0], tp_slice.shape[0]), m.shard_sizes[0])
        name = "r%d_%d_0.bin" % (rank, n)
        (out / name).write_bytes(_bytes(piece))
        doc[fqn] = {"kind": "sharded", "size": list(tp_slice.shape),
                    "tp_offsets": list(tp_md.shard_offsets),
                    "placements": [str(x.placement) for x in dp_mds],
                    "shards": [{"offsets": list(m.shard_offsets), "sizes": list(m.shard_sizes),
                                "bin": name}]}
    (out / ("rank%d.json" % rank)).write_text(json.dumps(doc, indent=1))


def _rank_main(rank, port, root):
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)
    import warnings
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=120))
    try:
        _fsdp_case(Path(root), rank)
        dist.barrier()
        _2d_case(Path(root), rank)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import torch.distributed.checkpoint.optimizer  # noqa: F401  (imported before the fork)
    import torch.distributed.checkpoint.state_dict  # noqa: F401
    import torch.distributed.device_mesh  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401
    import torch.distributed.tensor  # noqa: F401
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        mp.start_processes(_rank_main, args=(port, args.out), nprocs=WORLD, join=True,
                           start_method=os.environ.get("DCPP_MP_START", "fork"))
    except Exception as e:  # noqa: BLE001
        print("optim_oracle.py: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
