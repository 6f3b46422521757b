#!/usr/bin/python3
"""Distributed half of tools/bench (stdlib only; tools/bench calls it, see there).

    measure_dist.py --spec SPEC.json --work DIR --dcpp BIN --dist-save-bench BIN --torch2 PY
                    [--ranks 4] [--repeat 3] [--results FILE]

With RANKS local Gloo ranks started by torch 2.13's torchrun, on the tensors of SPEC.json
(`dcpp inspect --json` of the bench checkpoint), in this order:
  (i)   torch 2.13 dcp.save of Shard(0) DTensors into WORK/torch (tools/bench.d/dist_torch.py);
        that checkpoint is what every load below reads;
  (ii)  torch 2.13 dcp.load into Shard(0) DTensors, and into whole tensors on every rank;
  (iii) dcpp load by rows (`dcpp load --layout rows`), and whole on every rank
        (`--layout replicated`) with read-once and with --no-read-once: seconds, and the bytes
        every rank read from storage and received from the others;
  (iv)  dcpp save of the same rows over the group (dcpp-dist-save-bench) into WORK/dcpp.
Each figure is the median over --repeat timed runs of the slowest rank's time inside the call
(process start and group setup excluded), after one untimed run for the loads (page cache
warm). Saves fsync (both savers' default) on this disk.
"""

import argparse
import json
import os
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from measure import BenchError, median, run_proc, tail  # noqa: E402

TORCH_RANK = os.path.join(HERE, "dist_torch.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(py, ranks, argv, no_python=False, key="seconds"):
    """Runs argv as `ranks` ranks under torchrun; returns the JSON object (one per line on the
    ranks' shared stdout) that has `key`: rank 0's."""
    cmd = [os.path.join(os.path.dirname(py), "torchrun"), "--standalone", "--nproc-per-node", str(ranks)]
    if no_python:
        cmd.append("--no-python")
    # torchrun's agent store speaks a protocol Debian's libtorch 1.13 lacks: dcpp serves its own.
    os.environ["DCPP_STORE_PORT"] = str(free_port())
    rc, out, err, _, _ = run_proc(cmd + argv, timeout=1800)
    if rc != 0:
        raise BenchError("%s failed (%d):\n%s" % (" ".join(argv[:2]), rc, tail(err)))
    for line in out.splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if key in doc:
                return doc
    raise BenchError("%s printed no JSON object with %r; stdout was:\n%s" % (argv[0], key, tail(out)))


def torch_runs(args, mode, ckpt, repeat):
    doc = torchrun(args.torch2, args.ranks, [TORCH_RANK, "--spec", args.spec, "--ckpt", ckpt, "--mode", mode,
                                             "--repeat", str(repeat)])
    return doc["bytes"], doc["seconds"]


def dcpp_load(args, ckpt, layout, read_once):
    runs = []
    for i in range(args.repeat + 1):  # the first run warms the page cache
        argv = [args.dcpp, "load", "--json", "--layout", layout, ckpt]
        if not read_once:
            argv.insert(2, "--no-read-once")
        total = torchrun(args.torch2, args.ranks, argv, no_python=True, key="total")["total"]
        if i > 0:
            runs.append(total)
    return {"seconds": [r["seconds"] for r in runs], "bytes": runs[0]["bytes"],
            "storage_bytes": runs[0]["storage_bytes"], "received_bytes": runs[0]["received_bytes"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--dcpp", required=True)
    ap.add_argument("--dist-save-bench", required=True)
    ap.add_argument("--torch2", required=True)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--results")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    ckpt = os.path.join(args.work, "torch")
    res = {"ranks": args.ranks}
    try:
        nbytes, res["torch_save"] = torch_runs(args, "save", ckpt, args.repeat)
        res["bytes"] = nbytes
        _, loads = torch_runs(args, "load", ckpt, args.repeat + 1)
        res["torch_load"] = loads[1:]
        _, loads = torch_runs(args, "load_replicated", ckpt, args.repeat + 1)
        res["torch_load_replicated"] = loads[1:]
        res["dcpp_load"] = dcpp_load(args, ckpt, "rows", True)
        res["dcpp_load_replicated"] = dcpp_load(args, ckpt, "replicated", True)
        res["dcpp_load_replicated_no_read_once"] = dcpp_load(args, ckpt, "replicated", False)
        doc = torchrun(args.torch2, args.ranks, [args.dist_save_bench, "--spec", ckpt, "--out",
                                                 os.path.join(args.work, "dcpp"), "--repeat", str(args.repeat)],
                       no_python=True)
        res["dcpp_save"] = doc["seconds"]
    except BenchError as e:
        print("measure_dist: %s" % e, file=sys.stderr)
        return 1
    if args.results:
        with open(args.results, "w") as f:
            json.dump(res, f, indent=1)

    gb = nbytes / 1e9
    def row(name, seconds, volume=gb, extra=""):
        s = median(seconds)
        print("%-44s %8.3f s %8.2f GB/s  %s" % (name, s, volume / s, extra))
        return s
    print("\n%d local Gloo ranks, %.2f GB of tensors (a torch 2.13 Shard(0) checkpoint)" % (args.ranks, gb))
    ts = row("torch 2.13 dcp.save (Shard(0), fsync)", res["torch_save"])
    ds = row("dcpp save over the group (rows, fsync)", res["dcpp_save"])
    tl = row("torch 2.13 dcp.load into Shard(0)", res["torch_load"])
    dl = row("dcpp load --layout rows", res["dcpp_load"]["seconds"])
    whole = gb * args.ranks  # every rank holds every tensor
    tr = row("torch 2.13 dcp.load, whole on every rank", res["torch_load_replicated"], whole)
    ro = res["dcpp_load_replicated"]
    no = res["dcpp_load_replicated_no_read_once"]
    dr = row("dcpp load --layout replicated (read-once)", ro["seconds"], whole,
             "read %.2f GB, received %.2f GB" % (ro["storage_bytes"] / 1e9, ro["received_bytes"] / 1e9))
    dn = row("dcpp load --layout replicated --no-read-once", no["seconds"], whole,
             "read %.2f GB, received %.2f GB" % (no["storage_bytes"] / 1e9, no["received_bytes"] / 1e9))
    print("\nratios (>1: dcpp faster): save %.2fx, load rows %.2fx, load whole %.2fx (read-once) / %.2fx (off)"
          % (ts / ds, tl / dl, tr / dr, tr / dn))
    print("bytes read from storage, whole on every rank: %.2f GB with read-once, %.2f GB without (%.2fx)"
          % (ro["storage_bytes"] / 1e9, no["storage_bytes"] / 1e9, no["storage_bytes"] / max(ro["storage_bytes"], 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
