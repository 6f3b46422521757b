#!/usr/bin/python3
"""Save half of tools/bench (stdlib only; tools/bench calls it, see there).

    measure_save.py --spec SPEC.json --out DIR --dcpp-save-bench BIN --torch2 PY --torch1 PY
                    [--repeat 3] [--results FILE]

Every saver writes the same tensors (SPEC.json = `dcpp inspect --json` of the bench
checkpoint: names, dtypes, shapes) into a fresh directory under DIR with fsync on:
  (d) one thread write()+fsync of the same number of bytes into fresh files (the disk's bound),
  (e) torch 2.13 dcp.save, FileSystemWriter thread_count 1 (default), 2, 4,
  (f) torch 1.13 save_state_dict (no_dist),
  (g) dcpp save (dcpp-save-bench --mode sync),
  (h) dcpp Checkpointer.async_save: how long each call blocks (first call, later calls with
      the staging buffers reused) and the whole save,
  (i) the same after Checkpointer.prepare_async_save made the staging memory resident at set-up,
then prints the table and the targets (dcpp >= 3x the faster torch; every async_save call, the
first included, stalls <= 1/10 of a synchronous save; peak RSS of a sync save <= 1.2x the state dict).
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
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from measure import BenchError, last_json, run_proc, tail  # noqa: E402

TORCH_SAVE = os.path.join(REPO, "tests", "python", "bench_torch_save.py")


def disk_bound(out, nbytes, repeat):
    """One thread writing nbytes from memory into 64 MiB-chunked fresh files, fsync'ed."""
    chunk = b"\x5a" * (64 << 20)
    runs = []
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        os.sync()  # every saver starts settled (see dcpp-save-bench)
        time.sleep(1)
        t0 = time.perf_counter()
        fd = os.open(os.path.join(out, "data"), os.O_WRONLY | os.O_CREAT, 0o644)
        left = nbytes
        while left > 0:
            left -= os.write(fd, chunk[:min(left, len(chunk))])
        os.fsync(fd)
        os.close(fd)
        runs.append(time.perf_counter() - t0)
    shutil.rmtree(out, ignore_errors=True)
    return runs


def torch_save(py, spec, out, repeat):
    cmd = [py, TORCH_SAVE, "--spec", spec, "--out", out, "--repeat", str(repeat)]
    rc, stdout, err, wall, rss = run_proc(cmd, timeout=1800)
    if rc != 0:
        raise BenchError("`%s` failed (exit %d):\n%s" % (" ".join(cmd), rc, tail(err or stdout)))
    return last_json(stdout, "bench_torch_save.py")


def dcpp_save(binary, spec, out, mode, repeat):
    shutil.rmtree(out, ignore_errors=True)
    cmd = [binary, "--spec", spec, "--out", out, "--mode", mode, "--repeat", str(repeat)]
    rc, stdout, err, wall, rss = run_proc(cmd, timeout=1800)
    shutil.rmtree(out, ignore_errors=True)
    if rc != 0:
        raise BenchError("`%s` failed (exit %d):\n%s" % (" ".join(cmd), rc, tail(err or stdout)))
    j = last_json(stdout, "dcpp-save-bench")
    j["rss"] = rss
    return j


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True, help="CKPT_DIR whose tensors are saved")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dcpp-save-bench", required=True)
    ap.add_argument("--dcpp", required=True)
    ap.add_argument("--torch2", required=True)
    ap.add_argument("--torch1", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--results", default=None)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    spec_json = os.path.join(args.out, "spec.json")
    with open(spec_json, "w") as f:
        subprocess.run([args.dcpp, "inspect", "--json", args.spec], stdout=f, check=True)
    spec = json.load(open(spec_json))
    nbytes = sum(i["nbytes"] for i in spec["items"] if i["kind"] == "tensor")

    failures, rows = [], {}

    def step(name, fn):
        print("bench: measuring %s ..." % name, file=sys.stderr, flush=True)
        try:
            return fn()
        except (BenchError, OSError, subprocess.CalledProcessError) as e:
            failures.append("%s: %s" % (name, e))
            return None

    out = lambda name: os.path.join(args.out, name)  # noqa: E731
    r = step("(d) write+fsync, 1 thread", lambda: disk_bound(out("disk"), nbytes, args.repeat))
    if r:
        rows["disk"] = r
    r = step("(e) torch 2.13 dcp.save", lambda: torch_save(args.torch2, spec_json, out("t2"), args.repeat))
    if r:
        for key, secs in r["runs"].items():
            rows["torch2 " + key] = secs
    r = step("(f) torch 1.13 save_state_dict", lambda: torch_save(args.torch1, spec_json, out("t1"), args.repeat))
    if r:
        rows["torch1"] = r["runs"]["thread_count=1"]
    sync = step("(g) dcpp save", lambda: dcpp_save(args.dcpp_save_bench, args.spec, out("d"), "sync", args.repeat))
    if sync:
        rows["dcpp"] = sync["seconds"]
    asyn = step("(h) dcpp async_save", lambda: dcpp_save(args.dcpp_save_bench, args.spec, out("a"), "async",
                                                         max(args.repeat, 3)))
    prep = step("(i) dcpp async_save, prepared", lambda: dcpp_save(args.dcpp_save_bench, args.spec, out("p"),
                                                                   "prepared", max(args.repeat, 3)))

    med = {k: statistics.median(v) for k, v in rows.items()}
    print()
    print("dcpp save bench: %d tensors, %d bytes (%.3f GB), fsync on, fresh directory per save, "
          "medians of %d" % (sum(1 for i in spec["items"] if i["kind"] == "tensor"), nbytes, nbytes / 1e9,
                             args.repeat))
    print("%-46s %8s  %s" % ("measurement", "GB/s", "seconds"))
    labels = [("disk", "(d) write+fsync, 1 thread (disk bound)")] + \
             [(k, "(e) torch 2.13 dcp.save, " + k.split(" ", 1)[1]) for k in rows if k.startswith("torch2 ")] + \
             [("torch1", "(f) torch 1.13 save_state_dict"), ("dcpp", "(g) dcpp save")]
    for key, label in labels:
        if key in med:
            print("%-46s %8.3f  %.3f %s" % (label, nbytes / med[key] / 1e9, med[key],
                                            "[" + " ".join("%.2f" % s for s in rows[key]) + "]"))
        else:
            print("%-46s %8s" % (label, "FAILED"))
    if asyn:
        st, tot = asyn["stall_seconds"], asyn["seconds"]
        print("%-46s %8s  first %.3f, later %s" % ("(h) dcpp async_save: call blocks for", "",
                                                   st[0], " ".join("%.3f" % s for s in st[1:])))
        print("%-46s %8s  %s" % ("    whole async save (call to future ready)", "",
                                 " ".join("%.3f" % s for s in tot)))
    if prep:
        st = prep["stall_seconds"]
        print("%-46s %8s  first %.3f, later %s (prepare_async_save %.3f)" % (
            "(i) the same after prepare_async_save: blocks", "", st[0], " ".join("%.3f" % s for s in st[1:]),
            prep["prepare_seconds"]))
    print()
    torch_best = min([v for k, v in med.items() if k.startswith("torch")], default=None)
    if "dcpp" in med and torch_best:
        v = torch_best / med["dcpp"]
        print("%-46s %7.2fx   target >= 3x    %s" % ("dcpp / faster torch, GB/s", v, "PASS" if v >= 3 else "MISS"))
    if "dcpp" in med and "disk" in med:
        print("%-46s %7.2fx   (information)" % ("dcpp / write+fsync bound, GB/s", med["disk"] / med["dcpp"]))
    if asyn and "dcpp" in med:
        v = asyn["stall_seconds"][0] / med["dcpp"]
        print("%-46s %7.3f    target <= 0.1   %s" % ("first async_save stall / sync save", v,
                                                     "PASS" if v <= 0.1 else "MISS"))
    if prep and "dcpp" in med:
        v = prep["stall_seconds"][0] / med["dcpp"]
        print("%-46s %7.3f    target <= 0.1   %s" % ("first stall after prepare_async_save / sync", v,
                                                     "PASS" if v <= 0.1 else "MISS"))
    if asyn and "dcpp" in med and len(asyn["stall_seconds"]) > 1:
        later = statistics.median(asyn["stall_seconds"][1:])
        v = later / med["dcpp"]
        print("%-46s %7.3f    target <= 0.1   %s" % ("later async_save stall / sync save", v,
                                                     "PASS" if v <= 0.1 else "MISS"))
    if sync:
        v = sync["rss"] / nbytes
        print("%-46s %7.2fx   target <= 1.2x  %s" % ("sync save peak RSS / state dict", v,
                                                     "PASS" if v <= 1.2 else "MISS"))
    for f in failures:
        print("FAILED: " + f)
    if args.results:
        with open(args.results, "w") as f:
            json.dump({"rows": rows, "async": asyn, "prepared": prep, "sync": sync, "bytes": nbytes}, f, indent=1)
    shutil.rmtree(args.out, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
