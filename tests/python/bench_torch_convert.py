"""torch 2.13's way to turn one torch.save file into a DCP checkpoint, timed for tools/bench
(run with .venv/bin/python):

    PY tests/python/bench_torch_convert.py make --spec SPEC.json --pt IN.pt
    PY tests/python/bench_torch_convert.py time --pt IN.pt --out DIR [--repeat 3] [--thread-counts 1,4]

`make` writes IN.pt with torch.save: one tensor per tensor item of SPEC.json (`dcpp inspect
--json` of the bench checkpoint: names, dtypes, shapes), filled with a byte pattern. `time`
times, per --thread-counts (FileSystemWriter's thread_count; 1 is its default), --repeat runs of
torch.load(IN.pt, mmap=True) + dcp.save into a fresh DIR with the writer's defaults (sync_files
on), DIR removed, then sync and a 1 s pause, outside the timed region. Prints one JSON object:
{"torch": version, "bytes": N, "runs": {"thread_count=K": [seconds, ...]}}.
"""

import argparse
import json
import os
import shutil
import time
import warnings


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["make", "time"])
    ap.add_argument("--spec")
    ap.add_argument("--pt", required=True)
    ap.add_argument("--out")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--thread-counts", default="1,4")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import torch
    import torch.distributed.checkpoint as dcp

    if args.mode == "make":
        sd = {}
        for item in json.load(open(args.spec))["items"]:
            if item["kind"] != "tensor":
                continue
            t = torch.empty(item["shape"], dtype=getattr(torch, item["dtype"]))
            if t.numel():
                t.view(-1).view(torch.uint8).fill_(0x5A)
            sd[item["fqn"]] = t
        torch.save(sd, args.pt + ".tmp")
        os.replace(args.pt + ".tmp", args.pt)
        return

    runs = {}
    nbytes = 0
    for tc in [int(x) for x in args.thread_counts.split(",")]:
        key = "thread_count=%d" % tc
        runs[key] = []
        for _ in range(args.repeat):
            shutil.rmtree(args.out, ignore_errors=True)
            os.sync()
            time.sleep(1)
            t0 = time.perf_counter()
            sd = torch.load(args.pt, mmap=True, weights_only=True)
            dcp.save(sd, storage_writer=dcp.FileSystemWriter(args.out, thread_count=tc))
            runs[key].append(time.perf_counter() - t0)
            nbytes = sum(t.numel() * t.element_size() for t in sd.values())
            del sd
    shutil.rmtree(args.out, ignore_errors=True)
    print(json.dumps({"torch": torch.__version__, "bytes": nbytes, "runs": runs}))


if __name__ == "__main__":
    main()
