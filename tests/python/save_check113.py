#!/usr/bin/env python3
"""torch 1.13's side of the dcp.save suite: loads `format torch1.13` checkpoints that dcpp
wrote with torch.distributed._shard.checkpoint.load_state_dict and compares every value bit
for bit with what the C++ test saved. Run with /usr/bin/python3 (Debian's torch 1.13).

    save_check113.py load MANIFEST    every check of MANIFEST, single process (no_dist=True)
    save_check113.py dist MANIFEST    the "dist" runs: W Gloo ranks each, tensors with at least
                                      one dim as ShardedTensors (ChunkShardingSpec, dim 0)

MANIFEST is save_check.py's format (tests/python/README.md); 1.13 has no nesting, so a
tensor's key is its path joined with '.'. Output: `ok NAME` or `FAIL NAME: reason` per check,
exit status 1 when any failed.
"""

import ast
import json
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

import dcp113  # noqa: E402  (patches dataclasses before torch.distributed._shard)
from dcp113 import dcp, dist, torch  # noqa: E402
import expected_common as common  # noqa: E402
from expected_common import fqn_of, report, same_object  # noqa: E402


def as_bytes(t):
    t = t.detach().contiguous().reshape(-1)
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return torch.from_numpy(t.numpy().view("uint8").copy()) if t.numel() else torch.empty(0, dtype=torch.uint8)


def expected_tensor(spec):
    return common.expected_tensor(torch, spec)


def same_tensor(got, want):
    return common.same_tensor(torch, got, want, as_bytes)


def run_load(check):
    reader = dcp.FileSystemReader(check["ckpt"])
    md = reader.read_metadata()
    want_keys = {fqn_of(t["path"]) for t in check["tensors"]} | {fqn_of(o["path"]) for o in check["objects"]}
    if set(md.state_dict_metadata) != want_keys:
        return "keys %s, expected %s" % (sorted(md.state_dict_metadata), sorted(want_keys))
    sd, wants = {}, {}
    for t in check["tensors"]:
        want = expected_tensor(t)
        wants[fqn_of(t["path"])] = want
        sd[fqn_of(t["path"])] = torch.zeros(want.shape, dtype=want.dtype)
    for o in check["objects"]:
        sd[fqn_of(o["path"])] = None
    dcp.load_state_dict(sd, reader, no_dist=True)
    for fqn, want in wants.items():
        bad = same_tensor(sd[fqn], want)
        if bad:
            return "%s: %s" % (fqn, bad)
    for o in check["objects"]:
        got, want = sd[fqn_of(o["path"])], ast.literal_eval(o["literal"])
        if not same_object(got, want):
            return "%s: %r, expected %r" % (fqn_of(o["path"]), got, want)
    return None


def _dist_check(check, rank, world):
    from torch.distributed._shard import sharded_tensor
    from torch.distributed._shard.sharding_spec import ChunkShardingSpec
    spec = ChunkShardingSpec(dim=0, placements=["rank:%d/cpu" % r for r in range(world)])
    sd, wants = {}, {}
    for t in check["tensors"]:
        want = expected_tensor(t)
        fqn = fqn_of(t["path"])
        wants[fqn] = want
        if want.dim() >= 1 and want.shape[0] > 0:
            sd[fqn] = sharded_tensor.zeros(spec, *want.shape, dtype=want.dtype)
        else:
            sd[fqn] = torch.zeros(want.shape, dtype=want.dtype)
    for o in check["objects"]:
        sd[fqn_of(o["path"])] = None
    dcp.load_state_dict(sd, dcp.FileSystemReader(check["ckpt"]))
    for fqn, want in wants.items():
        got = sd[fqn]
        if not isinstance(got, sharded_tensor.ShardedTensor):
            bad = same_tensor(got, want)
        else:
            parts = list(torch.chunk(want, world, dim=0))
            shards = got.local_shards()
            if rank < len(parts):
                if len(shards) != 1:
                    return "rank %d: %s: %d local shards" % (rank, fqn, len(shards))
                off = shards[0].metadata.shard_offsets[0]
                if off != sum(p.shape[0] for p in parts[:rank]):
                    return "rank %d: %s: shard offset %d" % (rank, fqn, off)
                bad = same_tensor(shards[0].tensor, parts[rank])
            else:
                bad = None if not shards else "rank %d: %s: unexpected shard" % (rank, fqn)
        if bad:
            return "rank %d: %s: %s" % (rank, fqn, bad)
    for o in check["objects"]:
        got, want = sd[fqn_of(o["path"])], ast.literal_eval(o["literal"])
        if not same_object(got, want):
            return "rank %d: %s: %r, expected %r" % (rank, fqn_of(o["path"]), got, want)
    return None


def _rank_entry(rank, world, init_file, checks, queue):
    try:
        dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank,
                                world_size=world, timeout=timedelta(seconds=120))
        for check in checks:
            try:
                bad = _dist_check(check, rank, world)
            except Exception:
                bad = "rank %d: exception:\n%s" % (rank, traceback.format_exc())
            queue.put((check["name"], rank, bad))
            dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        queue.put(("*", rank, traceback.format_exc()))
    queue.close()
    queue.join_thread()
    os._exit(0)


def run_dist(manifest, timeout_s=300):
    ok = True
    by_world = {}
    for check in manifest.get("dist", []):
        by_world.setdefault(check["world"], []).append(check)
    for world, checks in sorted(by_world.items()):
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        tmp = tempfile.mkdtemp(prefix="dcp113-save-")
        procs = [ctx.Process(target=_rank_entry, args=(r, world, os.path.join(tmp, "store"), checks, queue))
                 for r in range(world)]
        for p in procs:
            p.start()
        msgs, deadline = [], time.monotonic() + timeout_s
        while len(msgs) < world * len(checks) and time.monotonic() < deadline:
            try:
                msgs.append(queue.get(timeout=0.5))
            except Exception:
                if not any(p.is_alive() for p in procs):
                    break
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
        fatal = [m[2] for m in msgs if m[0] == "*"]
        for check in checks:
            mine = [m for m in msgs if m[0] == check["name"]]
            bads = [m[2] for m in mine if m[2]] + fatal
            if len(mine) != world:
                bads.append("%d of %d ranks reported" % (len(mine), world))
            if bads:
                ok = False
                print("FAIL %s: %s" % (check["name"], "; ".join(bads)), flush=True)
            else:
                print("ok %s (%d ranks)" % (check["name"], world), flush=True)
    return ok


def main(argv):
    if len(argv) != 3:
        raise SystemExit(__doc__)
    manifest = json.loads(Path(argv[2]).read_text())
    if argv[1] == "load":
        ok = all([report(c["name"], run_load, c) for c in manifest["checks"]])
    elif argv[1] == "dist":
        ok = run_dist(manifest)
    else:
        raise SystemExit("unknown mode %r" % argv[1])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
