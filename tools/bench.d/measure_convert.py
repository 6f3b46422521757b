#!/usr/bin/python3
"""Convert half of tools/bench (stdlib only; tools/bench calls it, see there).

    measure_convert.py --spec SPEC.json --work DIR --dcpp BIN --torch2 PY --fresh-read BIN
                       [--repeat 3] [--results FILE]

A torch.save file of the bench checkpoint's tensors (DIR/model.pt, written once by torch 2.13)
becomes a one-rank checkpoint with fsync on, in a fresh directory each run (sync and a 1 s pause
first, outside the clock):
  (a) one thread reading model.pt into fresh memory (fresh_read: the read side's bound),
  (b) one thread write()+fsync of as many bytes into a fresh file (the disk's bound),
  (c) torch 2.13: torch.load(model.pt, mmap=True) + dcp.save, FileSystemWriter thread_count 1
      and 4 (the better one counts),
  (d) `dcpp convert model.pt OUT_DIR` (the whole process: start, import, save with fsync),
then prints the medians, dcpp / torch (target >= 1.4x) and dcpp's peak RSS.
"""

import argparse
import json
import os
import shutil
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from measure import BenchError, last_json, run_proc, tail  # noqa: E402
from measure_save import disk_bound  # noqa: E402


def checked(cmd, what, timeout=1800):
    rc, out, err, wall, rss = run_proc(cmd, timeout=timeout)
    if rc != 0:
        raise BenchError("%s failed (exit %d):\n%s" % (what, rc, tail(err or out)))
    return out, wall, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--dcpp", required=True)
    ap.add_argument("--torch2", required=True)
    ap.add_argument("--fresh-read", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--results")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    pt = os.path.join(args.work, "model.pt")
    out = os.path.join(args.work, "out")
    script = os.path.join(HERE, "torch_convert.py")
    if not os.path.exists(pt + ".complete"):
        checked([args.torch2, script, "make", "--spec", args.spec, "--out", pt], "torch.save of model.pt")
        open(pt + ".complete", "w").close()
    size = os.path.getsize(pt)

    fresh = []
    for _ in range(args.repeat):
        stdout, _, _ = checked([args.fresh_read, pt], "fresh_read")
        fresh.append(last_json(stdout, "fresh_read")["seconds"])
    disk = disk_bound(os.path.join(args.work, "disk"), size, args.repeat)

    stdout, _, _ = checked([args.torch2, script, "time", "--pt", pt, "--out", out, "--repeat", str(args.repeat)],
                           "torch 2.13 load+dcp.save")
    torch_runs = last_json(stdout, "torch_convert.py")
    tensor_bytes = torch_runs["bytes"]

    dcpp, rss = [], 0
    for _ in range(args.repeat):
        shutil.rmtree(out, ignore_errors=True)
        os.sync()
        import time
        time.sleep(1)
        _, wall, peak = checked([args.dcpp, "convert", "--quiet", pt, out], "dcpp convert")
        dcpp.append(wall)
        rss = max(rss, peak)
    shutil.rmtree(out, ignore_errors=True)

    med = statistics.median
    rows = [("(a) fresh read of model.pt, 1 thread", med(fresh)), ("(b) write+fsync, 1 thread", med(disk))]
    best_torch = None
    for name, runs in sorted(torch_runs["runs"].items()):
        rows.append(("(c) torch %s load(mmap)+dcp.save %s" % (torch_runs["torch"], name), med(runs)))
        best_torch = med(runs) if best_torch is None else min(best_torch, med(runs))
    rows.append(("(d) dcpp convert model.pt OUT_DIR", med(dcpp)))
    print("\nconvert: %.2f GiB of tensors in a %.2f GiB torch.save file -> a checkpoint, fsync on "
          "(medians of %d)" % (tensor_bytes / 2**30, size / 2**30, args.repeat))
    print("| %-50s | %8s | %8s |" % ("", "seconds", "GB/s"))
    print("|%s|%s|%s|" % ("-" * 52, "-" * 10, "-" * 10))
    for name, s in rows:
        print("| %-50s | %8.3f | %8.2f |" % (name, s, tensor_bytes / s / 1e9))
    ratio = best_torch / med(dcpp)
    print("dcpp / the faster torch: %.2fx (target >= 1.4x); dcpp / write+fsync bound: %.2fx; "
          "dcpp peak RSS %.0f MiB" % (ratio, med(disk) / med(dcpp), rss / 2**20))
    if args.results:
        results = json.load(open(args.results)) if os.path.exists(args.results) else {}
        results["convert"] = {"bytes": tensor_bytes, "file_bytes": size, "fresh_read_s": fresh, "disk_s": disk,
                              "torch": torch_runs["runs"], "dcpp_s": dcpp, "dcpp_rss": rss, "ratio": ratio}
        json.dump(results, open(args.results, "w"), indent=1)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print("measure_convert: %s" % e, file=sys.stderr)
        sys.exit(1)
