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
  (iv)  dcpp save of the same rows over the group (dcpp-dist-save-bench) into WORK/dcpp;
  (v)   dcpp load --layout replicated played as 2 hosts (DCPP_HOST=h0 for the first half of the
        ranks, h1 for the others): read-once's default, and --slowest-link storage, with the
        bytes read from storage and received.
Each figure is the median over --repeat launches (one call each; torch's and dcpp's in turns,
round by round) of the slowest rank's time inside the call (process start and group setup
excluded) and of the launch's wall time, after one untimed round for the loads (page cache
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
    ranks' shared stdout) that has `key`: rank 0's, with "wall", the launch's wall seconds."""
    cmd = [os.path.join(os.path.dirname(py), "torchrun"), "--standalone", "--nproc-per-node", str(ranks)]
    if no_python:
        cmd.append("--no-python")
    # torchrun's agent store speaks a protocol Debian's libtorch 1.13 lacks: dcpp serves its own.
    os.environ["DCPP_STORE_PORT"] = str(free_port())
    rc, out, err, wall, _ = run_proc(cmd + argv, timeout=1800)
    if rc != 0:
        raise BenchError("%s failed (%d):\n%s" % (" ".join(argv[:2]), rc, tail(err)))
    for line in out.splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if key in doc:
                doc["wall"] = wall
                return doc
    raise BenchError("%s printed no JSON object with %r; stdout was:\n%s" % (argv[0], key, tail(out)))


def played_hosts(argv, ranks_per_host):
    """argv run with DCPP_HOST set per rank: ranks [0, n) play host h0, [n, 2n) h1, ..."""
    return ["/bin/sh", "-c", 'DCPP_HOST=h$((LOCAL_RANK / %d)) exec "$0" "$@"' % ranks_per_host] + argv


class Runs:
    """One figure's launches: seconds inside the call (the slowest rank's) and launch wall."""

    def __init__(self):
        self.seconds, self.wall, self.doc = [], [], None

    def add(self, seconds, wall, doc):
        self.seconds.append(seconds)
        self.wall.append(wall)
        self.doc = doc

    def as_json(self):
        return {"seconds": self.seconds, "wall": self.wall, "last": self.doc}


def torch_call(args, mode, ckpt):
    doc = torchrun(args.torch2, args.ranks, [TORCH_RANK, "--spec", args.spec, "--ckpt", ckpt, "--mode", mode,
                                             "--repeat", "1"])
    return doc["seconds"][0], doc["wall"], doc


def dcpp_load(args, ckpt, layout, flags=(), hosts_of=0):
    argv = [args.dcpp, "load", "--json", "--layout", layout] + list(flags) + [ckpt]
    if hosts_of:
        argv = played_hosts(argv, hosts_of)
    doc = torchrun(args.torch2, args.ranks, argv, no_python=True, key="total")
    return doc["total"]["seconds"], doc["wall"], doc["total"]


def dcpp_save(args, ckpt):
    doc = torchrun(args.torch2, args.ranks, [args.dist_save_bench, "--spec", ckpt, "--out",
                                             os.path.join(args.work, "dcpp"), "--repeat", "1"], no_python=True)
    return doc["seconds"][0], doc["wall"], doc


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
    half = max(1, args.ranks // 2)
    # Each figure: one launch per call, torch's and dcpp's interleaved round by round (this VM's
    # disk and neighbours drift); loads after one untimed round that warms the page cache.
    figures = {
        "torch_save": lambda: torch_call(args, "save", ckpt),
        "dcpp_save": lambda: dcpp_save(args, ckpt),
        "torch_load": lambda: torch_call(args, "load", ckpt),
        "dcpp_load": lambda: dcpp_load(args, ckpt, "rows"),
        "torch_load_replicated": lambda: torch_call(args, "load_replicated", ckpt),
        "dcpp_load_replicated": lambda: dcpp_load(args, ckpt, "replicated"),
        "dcpp_load_replicated_no_read_once": lambda: dcpp_load(args, ckpt, "replicated", ["--no-read-once"]),
        "dcpp_load_replicated_2_hosts": lambda: dcpp_load(args, ckpt, "replicated", [], half),
        "dcpp_load_replicated_2_hosts_storage": lambda: dcpp_load(args, ckpt, "replicated",
                                                                  ["--slowest-link", "storage"], half),
    }
    runs = {name: Runs() for name in figures}
    try:
        for round_ in range(args.repeat + 1):
            for name, call in figures.items():
                if round_ == 0 and "save" in name and name != "torch_save":
                    continue  # saves need no warm-up; torch's first writes the checkpoint the loads read
                result = call()
                if round_ > 0:
                    runs[name].add(*result)
    except BenchError as e:
        print("measure_dist: %s" % e, file=sys.stderr)
        return 1
    nbytes = runs["torch_save"].doc["bytes"]
    if args.results:
        with open(args.results, "w") as f:
            json.dump({"ranks": args.ranks, "bytes": nbytes, **{k: v.as_json() for k, v in runs.items()}}, f, indent=1)

    gb = nbytes / 1e9
    whole = gb * args.ranks  # every rank holds every tensor

    def row(title, name, volume=gb, extra=""):
        r = runs[name]
        s, w = median(r.seconds), median(r.wall)
        print("%-50s %7.3f s %7.2f GB/s %7.2f s  %s" % (title, s, volume / s, w, extra))
        return s, w

    def read(name):
        t = runs[name].doc
        return "read %.2f GB, received %.2f GB" % (t["storage_bytes"] / 1e9, t["received_bytes"] / 1e9)

    print("\n%d local Gloo ranks, %.2f GB of tensors (a torch 2.13 Shard(0) checkpoint); medians of %d,"
          " one launch per call, torch and dcpp in turns" % (args.ranks, gb, args.repeat))
    print("%-50s %9s %12s %9s" % ("", "in call", "", "launch"))
    ts = row("torch 2.13 dcp.save (Shard(0), fsync)", "torch_save")
    ds = row("dcpp save over the group (rows, fsync)", "dcpp_save")
    tl = row("torch 2.13 dcp.load into Shard(0)", "torch_load")
    dl = row("dcpp load --layout rows", "dcpp_load")
    tr = row("torch 2.13 dcp.load, whole on every rank", "torch_load_replicated", whole)
    dr = row("dcpp load --layout replicated (read-once auto)", "dcpp_load_replicated", whole,
             read("dcpp_load_replicated"))
    dn = row("dcpp load --layout replicated --no-read-once", "dcpp_load_replicated_no_read_once", whole,
             read("dcpp_load_replicated_no_read_once"))
    print("played as 2 hosts (DCPP_HOST per rank), whole on every rank:")
    row("  read-once auto (--slowest-link host)", "dcpp_load_replicated_2_hosts", whole,
        read("dcpp_load_replicated_2_hosts"))
    row("  --slowest-link storage (broadcast across hosts)", "dcpp_load_replicated_2_hosts_storage", whole,
        read("dcpp_load_replicated_2_hosts_storage"))
    ratio = lambda t, d: "%.2fx in call, %.2fx launch" % (t[0] / d[0], t[1] / d[1])
    print("\nratios (>1: dcpp faster): save %s (target 2x); load rows %s (target 2x);"
          " load whole %s (target 1.5x)" % (ratio(ts, ds), ratio(tl, dl), ratio(tr, dr)))
    print("read-once auto / --no-read-once on one host: %.2f in call, %.2f launch (<= 1 plus noise: never the"
          " slow choice)" % (dr[0] / dn[0], dr[1] / dn[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
