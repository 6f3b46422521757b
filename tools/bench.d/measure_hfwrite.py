#!/usr/bin/env python3
"""Writing Hugging Face model directories, for tools/bench (`--only hfwrite`; torch 2.13's
virtualenv runs it).

    measure_hfwrite.py --work DIR --size-mb N --dcpp BIN [--repeat 3] [--rss] [--results FILE]

Consolidation: a 4-rank `sharded/` save of about SIZE MiB (bfloat16 and float32 weights of a
transformer's shapes, rows split over the ranks, each rank's file with DCP_SHARDING_INFO as
torch 2.13's HuggingFaceStorageWriter(save_distributed=True) writes it; written once by the
safetensors library) is consolidated into one model directory, --repeat times each, in turns:
  (a) torch 2.13's consolidate_safetensors_files(num_threads=1 and 4), every key into one file;
  (b) `dcpp convert --format hf` of the sharded directory (model.safetensors, 5GB shards).
torch writes through the page cache and never fsyncs; dcpp fsyncs every file and the directory,
as its publish rule requires. dcpp is compared with torch's faster thread count (target: >= 5x).
Wall time of a fresh process each (torch's timed inside it, imports excluded); peak RSS of dcpp.

--rss: peak RSS (GNU time's %M) of each conversion direction of one 4.3 GiB float32 tensor
(tests/python/huge_hf.py: a sparse safetensors file): safetensors file -> DCP, DCP -> .pt,
DCP -> .safetensors, DCP -> model directory (bound: 512 MiB).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from measure import BenchError, run_proc, tail  # noqa: E402

RANKS = 4


def make_sharded(work, size_mb):
    import torch
    from safetensors.torch import save_file

    sharded = os.path.join(work, "sharded")
    stamp = os.path.join(work, ".complete")
    if os.path.exists(stamp) and open(stamp).read() == str(size_mb):
        return sharded
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(sharded)
    hidden, layers = 2048, max(1, size_mb // 48)  # ~48 MiB of weights per layer
    g = torch.Generator().manual_seed(0)
    tensors = {"embed.weight": (torch.bfloat16, (8192, hidden))}
    for i in range(layers):
        tensors[f"layers.{i}.attn.qkv.weight"] = (torch.bfloat16, (3 * hidden, hidden))
        tensors[f"layers.{i}.mlp.up.weight"] = (torch.float32, (2 * hidden, hidden))
        tensors[f"layers.{i}.norm.weight"] = (torch.float32, (hidden,))
    for rank in range(RANKS):
        part, info = {}, {}
        for key, (dtype, shape) in tensors.items():
            rows = shape[0] // RANKS
            lo = rank * rows
            n = shape[0] - lo if rank == RANKS - 1 else rows
            part[key] = torch.randn((n,) + shape[1:], generator=g).to(dtype)
            info[key] = {"saved_offsets": [lo] + [0] * (len(shape) - 1)}
        name = f"shard-{rank + 1:05d}-model-00001-of-00001.safetensors"
        save_file(part, os.path.join(sharded, name),
                  metadata={"DCP_SHARDING_INFO": json.dumps(info), "DCP_VERSION": "1.0.0"})
    with open(os.path.join(work, "keys.json"), "w") as f:
        json.dump(sorted(tensors), f)
    open(stamp, "w").write(str(size_mb))
    return sharded


TORCH_SIDE = r'''
import json, sys, time, warnings
warnings.filterwarnings("ignore")
from torch.distributed.checkpoint._consolidate_hf_safetensors import consolidate_safetensors_files
sharded, out, keys, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
mapping = {k: 1 for k in json.load(open(keys))}
t0 = time.perf_counter()
consolidate_safetensors_files(sharded, out, mapping, num_threads=threads)
print(json.dumps({"seconds": time.perf_counter() - t0}))
'''


def gnu_time_rss(cmd):
    out = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError("failed: %s: %s" % (" ".join(cmd), tail(out.stderr)))
    return int(out.stderr.strip().splitlines()[-1]) * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--dcpp", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rss", action="store_true")
    ap.add_argument("--results")
    a = ap.parse_args()
    sharded = make_sharded(a.work, a.size_mb)
    keys = os.path.join(a.work, "keys.json")
    size = sum(os.path.getsize(os.path.join(sharded, n)) for n in os.listdir(sharded))
    out = os.path.join(a.work, "out")
    runs = {"torch 1 thread": [], "torch 4 threads": [], "dcpp": []}
    dcpp_rss = 0
    for _ in range(a.repeat):
        for threads in (1, 4):
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            rc, so, se, wall, _ = run_proc([sys.executable, "-c", TORCH_SIDE, sharded, out, keys, str(threads)])
            if rc != 0:
                raise BenchError("torch consolidation failed: " + tail(se))
            runs["torch %d thread%s" % (threads, "" if threads == 1 else "s")].append(json.loads(so)["seconds"])
        shutil.rmtree(out, ignore_errors=True)
        # GNU time, not this process's wait4: a child's maxrss counts the memory of the forked
        # interpreter (torch imported) before exec.
        rss_file = os.path.join(a.work, "rss")
        rc, so, se, wall, _ = run_proc(["/usr/bin/time", "-o", rss_file, "-f", "%M",
                                        a.dcpp, "convert", "--quiet", "--format", "hf", sharded, out])
        if rc != 0:
            raise BenchError("dcpp convert --format hf failed: " + tail(se))
        runs["dcpp"].append(wall)
        dcpp_rss = max(dcpp_rss, int(open(rss_file).read().split()[-1]) * 1024)
    med = {k: statistics.median(v) for k, v in runs.items()}
    results = {"bytes": size, "seconds": med, "dcpp_peak_rss": dcpp_rss}
    print("consolidation of a %d-rank sharded/ save, %.0f MiB (median of %d, wall s, fresh processes):"
          % (RANKS, size / 2**20, a.repeat))
    for k, v in med.items():
        print("  %-16s %8.3f s  %7.0f MiB/s" % (k, v, size / 2**20 / v))
    faster = min(med["torch 1 thread"], med["torch 4 threads"])
    print("  dcpp peak RSS %.0f MiB; dcpp vs the faster torch: %.1fx (target >= 5x)"
          % (dcpp_rss / 2**20, faster / med["dcpp"]))
    results["speedup"] = faster / med["dcpp"]

    if a.rss:
        big = os.path.join(a.work, "big")
        shutil.rmtree(big, ignore_errors=True)
        os.makedirs(big)
        huge = os.path.join(HERE, "..", "..", "tests", "python", "huge_hf.py")
        src, ckpt = os.path.join(big, "big.safetensors"), os.path.join(big, "ckpt")
        subprocess.run([sys.executable, huge, "make", src, "35000", "33000"], check=True)
        rss = {"safetensors -> DCP": gnu_time_rss([a.dcpp, "convert", "--quiet", src, ckpt])}
        for name, target, flags in (("DCP -> .pt", "out.pt", []), ("DCP -> .safetensors", "out.safetensors", []),
                                    ("DCP -> model directory", "model", ["--format", "hf"])):
            t = os.path.join(big, target)
            rss[name] = gnu_time_rss([a.dcpp, "convert", "--quiet"] + flags + [ckpt, t])
            shutil.rmtree(t, ignore_errors=True) if os.path.isdir(t) else os.remove(t)
        shutil.rmtree(big)
        print("peak RSS converting one 4.3 GiB tensor (bound 512 MiB):")
        for k, v in rss.items():
            print("  %-24s %6.0f MiB" % (k, v / 2**20))
        results["rss"] = rss
    if a.results:
        with open(a.results, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print("measure_hfwrite:", e, file=sys.stderr)
        sys.exit(1)
