#!/usr/bin/python3
"""Convert half of tools/bench (stdlib only; tools/bench calls it, see there).

    measure_convert.py --spec CKPT_DIR --work DIR --dcpp BIN --torch2 PY [--repeat 3] [--results FILE]

One torch.save file of the bench checkpoint's tensors (names, dtypes, shapes; written once by
torch 2.13 into DIR/in.pt and kept) becomes a one-rank checkpoint in a fresh directory with
fsync on, warm page cache, each run after a sync and a 1 s pause:
  (i) torch 2.13: torch.load(in.pt, mmap=True) + dcp.save (FileSystemWriter thread_count 1,
      its default, and 4),
  (j) dcpp convert in.pt OUT (imported through its read-only mapping, written by the save path),
taking turns (i, i, j, i, i, j, ...) so that a disk shared with other work slows each alike,
beside the machine's bounds: (k) one thread write()+fsync of as many bytes into a fresh file,
(l) one thread reading in.pt into fresh memory (fresh_read); then prints the medians and the
target (dcpp >= 1.4x the faster torch thread_count; the ratio to dcp.save's defaults too). On a throttled disk every saver runs at the disk's
speed: DCPP_BENCH_CACHE on tmpfs (/dev/shm) measures the savers themselves.
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
from measure_save import disk_bound  # noqa: E402

TORCH_CONVERT = os.path.join(REPO, "tests", "python", "bench_torch_convert.py")


def dcpp_convert(dcpp, pt, out):
    """One timed conversion; returns (seconds, peak RSS bytes)."""
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    time.sleep(1)
    rc, stdout, err, wall, peak = run_proc([dcpp, "convert", "--quiet", pt, out], timeout=1800)
    shutil.rmtree(out, ignore_errors=True)
    if rc != 0:
        raise BenchError("dcpp convert failed (exit %d):\n%s" % (rc, tail(err or stdout)))
    return wall, peak


def torch_convert(torch2, pt, out, thread_count):
    """One timed torch 2.13 conversion (the timing is bench_torch_convert.py's own)."""
    rc, stdout, err, wall, _ = run_proc([torch2, TORCH_CONVERT, "time", "--pt", pt, "--out", out, "--repeat", "1",
                                         "--thread-counts", str(thread_count)], timeout=1800)
    if rc != 0:
        raise BenchError("torch 2.13 (exit %d): %s" % (rc, tail(err or stdout)))
    j = last_json(stdout, "bench_torch_convert.py")
    return j["runs"]["thread_count=%d" % thread_count][0], j["bytes"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True, help="CKPT_DIR whose tensors the file holds")
    ap.add_argument("--work", required=True)
    ap.add_argument("--dcpp", required=True)
    ap.add_argument("--torch2", required=True)
    ap.add_argument("--fresh-read", default=None, help="tools/bench.d/fresh_read, compiled")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--results", default=None)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    pt = os.path.join(args.work, "in.pt")
    spec_json = os.path.join(args.work, "spec.json")
    with open(spec_json, "w") as f:
        subprocess.run([args.dcpp, "inspect", "--json", args.spec], stdout=f, check=True)
    if not os.path.exists(pt):
        print("bench: writing %s with torch 2.13 (kept for later runs)" % pt, file=sys.stderr, flush=True)
        subprocess.run([args.torch2, TORCH_CONVERT, "make", "--spec", spec_json, "--pt", pt], check=True)
    out = os.path.join(args.work, "out")
    failures, rows, rss, nbytes = [], {}, 0, 0
    print("bench: measuring (i) torch 2.13 torch.load(mmap=True) + dcp.save and (j) dcpp convert, in turns ...",
          file=sys.stderr, flush=True)
    for _ in range(args.repeat):
        try:
            for tc in (1, 4):
                seconds, nbytes = torch_convert(args.torch2, pt, out, tc)
                rows.setdefault("torch2 thread_count=%d" % tc, []).append(seconds)
            seconds, peak = dcpp_convert(args.dcpp, pt, out)
            rows.setdefault("dcpp", []).append(seconds)
            rss = max(rss, peak)
        except (BenchError, OSError) as e:
            failures.append(str(e))
            break
    size = os.path.getsize(pt)
    try:
        rows["disk"] = disk_bound(os.path.join(args.work, "disk"), size, args.repeat)
        if args.fresh_read:
            for _ in range(args.repeat):
                rc, stdout, err, _, _ = run_proc([args.fresh_read, pt])
                if rc != 0:
                    raise BenchError("fresh_read failed (exit %d):\n%s" % (rc, tail(err)))
                rows.setdefault("fresh", []).append(last_json(stdout, "fresh_read")["seconds"])
    except (BenchError, OSError) as e:
        failures.append(str(e))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print()
    print("convert bench: %s (%d bytes, %d of tensors) to a 1-rank checkpoint, fsync on, fresh directory, "
          "medians of %d" % (pt, size, nbytes, args.repeat))
    print("%-52s %8s  %s" % ("measurement", "GB/s", "seconds"))
    labels = {"dcpp": "(j) dcpp convert", "disk": "(k) bound: write+fsync, 1 thread",
              "fresh": "(l) bound: read into fresh memory, 1 thread"}
    for key in [k for k in rows if k.startswith("torch2 ")] + ["dcpp", "disk", "fresh"]:
        label = ("(i) torch 2.13 load(mmap)+dcp.save, " + key.split(" ", 1)[1]) if key.startswith("torch2 ") else labels[key]
        if key in med:
            print("%-52s %8.3f  %.3f [%s]" % (label, size / med[key] / 1e9, med[key], " ".join("%.2f" % s for s in rows[key])))
    default = med.get("torch2 thread_count=1")
    torch_best = min([v for k, v in med.items() if k.startswith("torch")], default=None)
    if "dcpp" in med and torch_best:
        v = torch_best / med["dcpp"]
        print("%-52s %7.2fx   target >= 1.4x  %s" % ("dcpp / the faster torch", v, "PASS" if v >= 1.4 else "MISS"))
    if "dcpp" in med and default:
        print("%-52s %7.2fx   (information)" % ("dcpp / torch (dcp.save's defaults)", default / med["dcpp"]))
    if "dcpp" in med and "disk" in med:
        print("%-52s %7.2fx   (information)" % ("dcpp / the write+fsync bound", med["disk"] / med["dcpp"]))
    if "dcpp" in med:
        print("%-52s %7.2fx   (information)" % ("dcpp convert peak RSS / file", rss / size))
    for f in failures:
        print("FAILED: " + f)
    if args.results:
        with open(args.results, "w") as f:
            json.dump({"rows": rows, "bytes": size, "dcpp_rss": rss}, f, indent=1)
    shutil.rmtree(out, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
