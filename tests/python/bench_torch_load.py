#!/usr/bin/python3
"""Time PyTorch 1.13's own checkpoint loader for tools/bench (run with /usr/bin/python3).

    /usr/bin/python3 tests/python/bench_torch_load.py --ckpt DIR [--repeat 3] [--warmup 1]

Reads DIR/.metadata, preallocates one full-size CPU tensor per tensor key with torch.zeros
(pages touched, outside the timed region; BYTE_IO keys get None), then times
torch.distributed._shard.checkpoint.load_state_dict(sd, FileSystemReader(DIR), no_dist=True)
--warmup + --repeat times in this one process, into the same preallocated tensors (BYTE_IO
entries reset to None before each load). Each timed region is exactly that one call
(FileSystemReader construction included; metadata read, planning, torch.load of every item,
copy into the destinations).

Prints one JSON object to stdout: {"bytes": tensor bytes of the checkpoint, "tensors": N,
"objects": N, "warmup_seconds": [...], "seconds": [...], "alloc_seconds": s,
"torch": version, "intra_op_threads": n}.
"""

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dcp113  # noqa: E402  (Python 3.11 dataclasses fix before torch DCP)
from dcp113 import BytesStorageMetadata, TensorStorageMetadata, dcp, torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()

    metadata = dcp113.read_metadata(args.ckpt)
    t0 = time.perf_counter()
    sd, objects, nbytes = {}, [], 0
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, TensorStorageMetadata):
            sd[fqn] = torch.zeros(md.size, dtype=md.properties.dtype)
            nbytes += math.prod(md.size) * sd[fqn].element_size()
        elif isinstance(md, BytesStorageMetadata):
            objects.append(fqn)
        else:
            raise SystemExit("bench_torch_load.py: unknown storage metadata %r for %r"
                             % (type(md).__name__, fqn))
    alloc_s = time.perf_counter() - t0
    n_tensors = len(sd)

    def once():
        for fqn in objects:
            sd[fqn] = None
        t = time.perf_counter()
        dcp.load_state_dict(sd, dcp.FileSystemReader(args.ckpt), no_dist=True)
        return time.perf_counter() - t

    warm = [once() for _ in range(args.warmup)]
    times = [once() for _ in range(args.repeat)]
    print(json.dumps({"bytes": nbytes, "tensors": n_tensors,
                      "objects": len(objects), "warmup_seconds": warm, "seconds": times,
                      "alloc_seconds": alloc_s, "torch": torch.__version__,
                      "intra_op_threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
