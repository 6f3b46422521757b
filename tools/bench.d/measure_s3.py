#!/usr/bin/env python3
"""The object-store half of tools/bench (`--only s3`; torch 2.13's virtualenv runs it).

    measure_s3.py --work DIR --size-mb N --dcpp BIN [--repeat 3] [--warmup 1] [--results FILE]

Starts a SeaweedFS S3 server on loopback (tests/python/seaweed.py; its data under DIR/server,
stopped at the end) and a state dict of about SIZE MiB (float32 and bfloat16 tensors of a
transformer's shapes plus small ones, from a fixed seed). Then, each --warmup times untimed
and --repeat times timed, every run a fresh process:
  (a) torch 2.13 dcp.save of the state dict through FsspecWriter (s3fs) to s3://dcpp/bench/torch
      (thread_count 1 and 4; the last one's checkpoint is what the loads read);
  (b) torch 2.13 dcp.load into fresh (torch.empty) tensors through FsspecReader (s3fs);
  (c) `dcpp load --json s3://dcpp/bench/torch`: wall time, bytes requested and requests issued;
  (d) `dcpp convert` of the same tensors in a torch.save file (written once, in the page
      cache) into a fresh s3://dcpp/bench/dcpp-N: dcpp's save, reading the file included.
Prints the medians, dcpp load over torch's (target >= 3x), and the bytes requested against the
bytes the tensors need.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from measure import BenchError, last_json, run_proc, tail  # noqa: E402

SEAWEED = os.path.join(ROOT, "tests", "python", "seaweed.py")

TORCH_SIDE = r'''
import json, os, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
mode, url, size_mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = {"key": os.environ["AWS_ACCESS_KEY_ID"], "secret": os.environ["AWS_SECRET_ACCESS_KEY"],
           "client_kwargs": {"endpoint_url": os.environ["AWS_ENDPOINT_URL"], "region_name": "us-east-1"}}
def spec():
    out, width, total = {}, 1024, 0
    layer = 0
    while total < (size_mb << 20):
        for name, shape, dtype in (("q", (width, width), torch.bfloat16), ("k", (width, width), torch.bfloat16),
                                   ("up", (2 * width, width), torch.float32), ("norm", (width,), torch.float32),
                                   ("bias", (7,), torch.float32)):
            out["layers.%d.%s" % (layer, name)] = (shape, dtype)
            total += torch.Size(shape).numel() * torch.finfo(dtype).bits // 8
        layer += 1
    return out
shapes = spec()
total = sum(torch.Size(s).numel() * torch.finfo(d).bits // 8 for s, d in shapes.values())
if mode == "write_pt":
    g = torch.Generator().manual_seed(0)
    torch.save({k: torch.randn(s, generator=g).to(d) for k, (s, d) in shapes.items()}, url)
    print(json.dumps({"bytes": total, "seconds": 0}))
    raise SystemExit(0)
if mode.startswith("save"):
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g).to(d) for k, (s, d) in shapes.items()}
    t0 = time.perf_counter()
    dcp.save(sd, storage_writer=FsspecWriter(url, thread_count=int(mode[4:]), sync_files=False, **options))
else:
    sd = None
    t0 = time.perf_counter()
    out = {k: torch.empty(s, dtype=d) for k, (s, d) in shapes.items()}
    dcp.load(out, storage_reader=FsspecReader(url, **options))
t = time.perf_counter() - t0
print(json.dumps({"bytes": total, "seconds": t}))
'''


def median(xs):
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--dcpp", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--results")
    a = ap.parse_args()
    server = os.path.join(a.work, "server")
    os.makedirs(server, exist_ok=True)
    started = subprocess.run([sys.executable, SEAWEED, "start", server], capture_output=True, text=True)
    if started.returncode != 0:
        raise BenchError("SeaweedFS did not start: " + tail(started.stderr + started.stdout))
    env = dict(os.environ)
    for line in open(os.path.join(server, "env")):
        k, _, v = line.strip().partition("=")
        env[k] = v
    os.environ.update(env)
    url = "s3://dcpp/bench/torch"
    results = {"size_mb": a.size_mb}
    try:
        def timed(what, cmd, n):
            runs = []
            for i in range(a.warmup + n):
                rc, out, err, wall, rss = run_proc(cmd)
                if rc != 0:
                    raise BenchError("%s failed (%d): %s" % (what, rc, tail(err)))
                doc = last_json(out, what)
                doc["wall"] = wall
                if i >= a.warmup:
                    runs.append(doc)
            return runs

        torch_cmd = [sys.executable, "-c", TORCH_SIDE]
        for threads in (1, 4):
            runs = timed("torch save", torch_cmd + ["save%d" % threads, url, str(a.size_mb)], a.repeat)
            results["torch_save_t%d_s" % threads] = median([r["seconds"] for r in runs])
            results["bytes"] = runs[0]["bytes"]
        # dcpp's save: the same tensors from a torch.save file (in the page cache) into a fresh
        # prefix each time, with `dcpp convert` (reading the file is part of its time).
        pt = os.path.join(a.work, "state.pt")
        if not os.path.exists(pt):
            timed("torch.save", torch_cmd + ["write_pt", pt, str(a.size_mb)], 1)
        runs = []
        for i in range(a.warmup + a.repeat):
            rc, out, err, wall, rss = run_proc([a.dcpp, "convert", "--quiet", pt, "s3://dcpp/bench/dcpp-%d" % i])
            if rc != 0:
                raise BenchError("dcpp convert to s3:// failed (%d): %s" % (rc, tail(err)))
            if i >= a.warmup:
                runs.append(wall)
        results["dcpp_save_s"] = median(runs)
        runs = timed("torch load", torch_cmd + ["load", url, str(a.size_mb)], a.repeat)
        results["torch_load_s"] = median([r["seconds"] for r in runs])
        runs = timed("dcpp load", [a.dcpp, "load", "--json", url], a.repeat)
        if runs[0]["bytes"] != results["bytes"]:
            raise BenchError("dcpp load read %d bytes, torch saved %d" % (runs[0]["bytes"], results["bytes"]))
        results["dcpp_load_s"] = median([r["wall"] for r in runs])
        results["dcpp_requests"] = runs[0]["requests"]
        results["dcpp_requested_bytes"] = runs[0]["storage_bytes"]
    finally:
        subprocess.run([sys.executable, SEAWEED, "stop", server])

    gb = results["bytes"] / 1e9
    print("\nobject store (SeaweedFS on loopback, %d MiB state dict; medians of %d runs)" % (a.size_mb, a.repeat))
    print("%-48s %8s %8s" % ("", "seconds", "GB/s"))
    rows = [("torch 2.13 dcp.save, FsspecWriter (s3fs), 1 thread", results["torch_save_t1_s"]),
            ("torch 2.13 dcp.save, FsspecWriter (s3fs), 4 threads", results["torch_save_t4_s"]),
            ("dcpp convert FILE.pt s3:// (process wall time)", results["dcpp_save_s"]),
            ("torch 2.13 dcp.load, FsspecReader (s3fs)", results["torch_load_s"]),
            ("dcpp load s3:// (process wall time)", results["dcpp_load_s"])]
    for name, s in rows:
        print("%-48s %8.2f %8.2f" % (name, s, gb / s))
    print("dcpp load / torch load: %.2fx (target >= 3x)" % (results["torch_load_s"] / results["dcpp_load_s"]))
    print("dcpp: %d requests, %d bytes requested for %d bytes of tensors (%.3fx)"
          % (results["dcpp_requests"], results["dcpp_requested_bytes"], results["bytes"],
             results["dcpp_requested_bytes"] / results["bytes"]))
    print("dcpp save / faster torch save: %.2fx"
          % (min(results["torch_save_t1_s"], results["torch_save_t4_s"]) / results["dcpp_save_s"]))
    if a.results:
        with open(a.results, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.exit("measure_s3.py: %s" % e)
