"""torch 2.13's side of `tools/bench --only dist`, run as every rank of torchrun (Gloo, CPU).

    torchrun --nproc-per-node 4 dist_torch.py --spec SPEC.json --ckpt DIR --mode M [--repeat N]

SPEC.json is `dcpp inspect --json` of the bench checkpoint (names, dtypes, shapes). Modes:
  save            each rank holds its rows (Shard(0) DTensors on a 1-D mesh) of every tensor,
                  filled with random values, and the ranks dcp.save them into DIR (fsync on,
                  torch's default), after rank 0 removed DIR and synced;
  load            the ranks dcp.load DIR into Shard(0) DTensors;
  load_replicated every rank dcp.load's every tensor whole (plain tensors: each reads them all).
Each timed call starts after a barrier; rank 0 prints one JSON object with the global tensor
bytes and, per call, the slowest rank's seconds.
"""

import argparse
import json
import os
import shutil
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard


def tensors_of(spec):
    for item in spec["items"]:
        if item.get("kind") == "tensor":
            yield item["fqn"], getattr(torch, item["dtype"]), tuple(item["shape"])


def rows(n, world, rank):
    """torch.chunk's rows of dim 0 for `rank`: (start, count)."""
    per = -(-n // world) if n else 0
    start = min(per * rank, n)
    return start, max(0, min(per, n - start))


def state_dict(spec, mesh, mode, fill):
    world, rank = dist.get_world_size(), dist.get_rank()
    gen = torch.Generator().manual_seed(rank)
    out = {}
    for name, dtype, shape in tensors_of(spec):
        if mode == "load_replicated":
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        if len(shape) == 0:
            local = torch.zeros((), dtype=dtype)
            out[name] = DTensor.from_local(local, mesh, [Replicate()], run_check=False)
            continue
        _, count = rows(shape[0], world, rank)
        local = torch.empty((count,) + shape[1:], dtype=dtype)
        if fill:
            if dtype.is_floating_point:
                local.uniform_(generator=gen)
            else:
                local.random_(0, 100, generator=gen)
        out[name] = DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=torch.Size(shape),
                                       stride=torch.empty(shape, device="meta").stride())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--mode", choices=["save", "load", "load_replicated"], required=True)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    rank = dist.get_rank()
    with open(args.spec) as f:
        spec = json.load(f)
    nbytes = sum(torch.empty((), dtype=d).element_size() * int(torch.Size(s).numel()) for _, d, s in tensors_of(spec))
    sd = state_dict(spec, mesh, args.mode, fill=args.mode == "save")
    times = []
    for _ in range(args.repeat):
        if args.mode == "save" and rank == 0:
            shutil.rmtree(args.ckpt, ignore_errors=True)
            os.sync()
            time.sleep(1)
        dist.barrier()
        t0 = time.perf_counter()
        if args.mode == "save":
            dcp.save(sd, checkpoint_id=args.ckpt)
        else:
            dcp.load(sd, checkpoint_id=args.ckpt)
        elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        times.append(elapsed.item())
    if rank == 0:
        print(json.dumps({"mode": args.mode, "ranks": dist.get_world_size(), "bytes": nbytes, "seconds": times}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
