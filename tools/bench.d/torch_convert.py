"""torch 2.13's side of tools/bench's convert table (run with .venv/bin/python).

    torch_convert.py make --spec SPEC.json --out MODEL.pt
    torch_convert.py time --pt MODEL.pt --out DIR [--repeat 3] [--thread-counts 1,4]

`make` writes MODEL.pt with torch.save: one CPU tensor per tensor item of SPEC.json (`dcpp
inspect --json` of the bench checkpoint: names, dtypes, shapes), filled with a byte pattern.
`time` times what a torch user does to turn such a file into a checkpoint:
`torch.load(MODEL.pt, mmap=True)` then `dcp.save` with FileSystemWriter(thread_count=K) and its
defaults (sync_files on), into a fresh DIR each run (removed, then sync and a 1 s pause, outside
the clock). Prints one JSON object: {"torch": version, "bytes": N,
"runs": {"thread_count=K": [seconds, ...]}}.
"""

import argparse
import json
import os
import shutil
import time
import warnings


def make(args, torch):
    spec = json.load(open(args.spec))
    sd = {}
    for item in spec["items"]:
        if item["kind"] != "tensor":
            continue
        t = torch.empty(item["shape"], dtype=getattr(torch, item["dtype"]))
        if t.numel():
            raw = t.view(-1).view(torch.uint8)
            raw.copy_(torch.arange(raw.numel(), dtype=torch.int64).mul_(31).remainder_(251).to(torch.uint8))
        sd[item["fqn"]] = t
    torch.save(sd, args.out)


def time_convert(args, torch):
    import torch.distributed.checkpoint as dcp

    runs = {}
    nbytes = 0
    for k in [int(x) for x in args.thread_counts.split(",")]:
        times = []
        for _ in range(args.repeat):
            shutil.rmtree(args.out, ignore_errors=True)
            os.makedirs(args.out)
            os.sync()
            time.sleep(1)
            t0 = time.perf_counter()
            sd = torch.load(args.pt, mmap=True, weights_only=True)
            dcp.save(sd, storage_writer=dcp.FileSystemWriter(args.out, thread_count=k), no_dist=True)
            times.append(time.perf_counter() - t0)
            nbytes = sum(t.numel() * t.element_size() for t in sd.values() if isinstance(t, torch.Tensor))
            del sd
        runs["thread_count=%d" % k] = times
    shutil.rmtree(args.out, ignore_errors=True)
    print(json.dumps({"torch": torch.__version__, "bytes": nbytes, "runs": runs}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["make", "time"])
    ap.add_argument("--spec")
    ap.add_argument("--pt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--thread-counts", default="1,4")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import torch

    if args.what == "make":
        make(args, torch)
    else:
        time_convert(args, torch)


if __name__ == "__main__":
    main()
