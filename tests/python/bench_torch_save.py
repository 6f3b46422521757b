"""Time PyTorch's own checkpoint saver for tools/bench: torch 2.13's dcp.save (run with
.venv/bin/python) or torch 1.13's save_state_dict (run with /usr/bin/python3).

    PY tests/python/bench_torch_save.py --spec SPEC.json --out DIR [--repeat 3]
                                        [--thread-counts 1,2,4]

SPEC.json is `dcpp inspect --json` of a checkpoint: one CPU tensor per tensor item (its dtype
and shape), filled with a byte pattern before timing. Each timed region is one save into a
fresh DIR (removed between runs, then sync and a 1 s pause, outside the region) with the library's FileSystemWriter and
its defaults (sync_files on: every data file and .metadata fsync'ed). torch 2.13 is timed with
each of --thread-counts (its writer's thread_count; 1 is the default). Prints one JSON object:
{"torch": version, "bytes": N, "runs": {"thread_count=K": [seconds, ...]}}.
"""

import argparse
import json
import math
import os
import shutil
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--thread-counts", default="1,2,4")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    import torch
    v2 = not torch.__version__.startswith("1.")
    if v2:
        import torch.distributed.checkpoint as dcp
    else:
        import dcp113  # noqa: F401  (Python 3.11 dataclasses fix before torch DCP)
        from dcp113 import dcp

    spec = json.load(open(args.spec))
    sd, nbytes = {}, 0
    for item in spec["items"]:
        if item["kind"] != "tensor":
            continue
        dtype = getattr(torch, item["dtype"])
        t = torch.empty(item["shape"], dtype=dtype)
        raw = t.view(-1).view(torch.uint8) if t.numel() else t
        if t.numel():
            raw.copy_(torch.arange(raw.numel(), dtype=torch.int64).mul_(31).remainder_(251).to(torch.uint8))
        sd[item["fqn"]] = t
        nbytes += math.prod(item["shape"]) * t.element_size()

    def once(**writer_args):
        shutil.rmtree(args.out, ignore_errors=True)
        os.makedirs(args.out)
        os.sync()  # as dcpp-save-bench: earlier writes and removals settled before the clock
        time.sleep(1)
        t0 = time.perf_counter()
        writer = dcp.FileSystemWriter(args.out, **writer_args)
        if v2:
            dcp.save(sd, storage_writer=writer)
        else:
            dcp.save_state_dict(sd, writer, no_dist=True)
        return time.perf_counter() - t0

    runs = {}
    counts = [int(c) for c in args.thread_counts.split(",")] if v2 else [1]
    for k in counts:
        key = "thread_count=%d" % k
        kwargs = {"thread_count": k} if v2 else {}
        runs[key] = [once(**kwargs) for _ in range(args.repeat)]
    shutil.rmtree(args.out, ignore_errors=True)
    print(json.dumps({"torch": torch.__version__, "bytes": nbytes, "runs": runs}))


if __name__ == "__main__":
    main()
