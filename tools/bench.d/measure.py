#!/usr/bin/python3
"""Measurement half of tools/bench (stdlib only; tools/bench calls it, see there).

    measure.py --ckpt DIR --fresh-read BIN --dcpp BIN [--threads N] [--repeat 3]
               [--warmup 1] [--results FILE]

Runs, in this order, each --warmup times untimed then --repeat times timed:
  (b) fresh_read over every DIR/*.distcp (one process per run), then fresh_read --prefaulted
      (information only),
  (a) tests/python/bench_torch_load.py (one process; it does its own warm-up and repeats),
  (c) dcpp load --json DIR [--threads N], then dcpp load --json --threads 1 DIR (one process
      per run; process wall time and peak RSS from wait4()'s rusage, i.e. what
      `/usr/bin/time -f %M` reports),
then prints the table. Exit status: 0 when everything ran (targets met or not), 1 when a
measurement failed (e.g. `dcpp load` missing), 2 on bad usage.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TORCH_PY = "/usr/bin/python3"
TORCH_SCRIPT = os.path.join(REPO, "tests", "python", "bench_torch_load.py")

TIMEOUT_S = 600


class BenchError(Exception):
    pass


def run_proc(cmd, timeout=TIMEOUT_S):
    """Run cmd; return (rc, stdout, stderr, wall seconds, peak RSS bytes of the process).
    Also stores the process's minor page faults in run_proc.minflt."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        try:
            p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        except OSError as e:  # e.g. the binary is being relinked right now
            raise BenchError("cannot run %s: %s" % (cmd[0], e)) from e
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        run_proc.minflt = ru.ru_minflt
        out.seek(0)
        err.seek(0)
        return (p.returncode, out.read().decode(errors="replace"),
                err.read().decode(errors="replace"), wall, ru.ru_maxrss * 1024)


def last_json(text, what):
    """The JSON object on stdout: the whole text, else its last line that parses as one."""
    text = text.strip()
    try:
        v = json.loads(text)
        if isinstance(v, dict):
            return v
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise BenchError("%s printed no JSON object on stdout; stdout was:\n%s" % (what, text[-2000:]))


def tail(s, n=1500):
    s = s.strip()
    return s if len(s) <= n else "..." + s[-n:]


def median(xs):
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------------------


def measure_fresh(binary, files, warmup, repeat, prefaulted=False):
    runs = []
    cmd = [binary] + (["--prefaulted"] if prefaulted else []) + files
    for i in range(warmup + repeat):
        rc, out, err, wall, rss = run_proc(cmd)
        if rc != 0:
            raise BenchError("fresh_read failed (exit %d):\n%s" % (rc, tail(err)))
        j = last_json(out, "fresh_read")
        if i >= warmup:
            runs.append({"bytes": j["bytes"], "seconds": j["seconds"], "wall": wall, "rss": rss,
                         "faults": j.get("minor_faults")})
    return runs


def measure_torch(ckpt, warmup, repeat):
    cmd = [TORCH_PY, TORCH_SCRIPT, "--ckpt", ckpt, "--repeat", str(repeat),
           "--warmup", str(warmup)]
    rc, out, err, wall, rss = run_proc(cmd)
    if rc != 0:
        raise BenchError("PyTorch load failed (exit %d): %s\n%s" % (rc, " ".join(cmd), tail(err)))
    j = last_json(out, "bench_torch_load.py")
    return j, [{"bytes": j["bytes"], "seconds": s, "wall": None, "rss": None}
               for s in j["seconds"]], rss


def dcpp_has_load(dcpp):
    if not os.access(dcpp, os.X_OK):
        return "%s does not exist or is not executable (did the build fail?)" % dcpp
    try:
        rc, out, err, wall, rss = run_proc([dcpp, "load", "--help"], timeout=60)
    except BenchError as e:
        return str(e)
    dcpp_has_load.baseline = (wall, rss)
    if rc != 0:
        msg = (err or out).strip().splitlines()
        return ("`%s load --help` exited %d%s: the `dcpp load` subcommand is missing from this "
                "build" % (dcpp, rc, (" (" + msg[0][:200] + ")") if msg else ""))
    return None


def measure_dcpp(dcpp, ckpt, threads, warmup, repeat, tensor_bytes, warnings):
    cmd = [dcpp, "load", "--json"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    cmd.append(ckpt)
    runs = []
    extra = {}
    for i in range(warmup + repeat):
        rc, out, err, wall, rss = run_proc(cmd)
        if rc != 0:
            raise BenchError("`%s` failed (exit %d):\n%s" % (" ".join(cmd), rc, tail(err or out)))
        j = last_json(out, " ".join(cmd))
        for k in ("bytes", "seconds"):
            if not isinstance(j.get(k), (int, float)):
                raise BenchError("`%s --json` output lacks a numeric %r: %s"
                                 % (" ".join(cmd), k, json.dumps(j)[:500]))
        if j["bytes"] != tensor_bytes:
            w = ("`%s`: reported bytes %d != checkpoint tensor bytes %d"
                 % (" ".join(cmd), j["bytes"], tensor_bytes))
            if w not in warnings:
                warnings.append(w)
        extra = {k: v for k, v in j.items() if k not in ("bytes", "seconds", "gbps")}
        if i >= warmup:
            runs.append({"bytes": j["bytes"], "seconds": j["seconds"], "wall": wall, "rss": rss,
                         "faults": run_proc.minflt})
    return cmd, runs, extra


# --------------------------------------------------------------------------------------


def fmt(x, spec, none="-"):
    return none if x is None else format(x, spec)


def summarize(runs):
    secs = [r["seconds"] for r in runs]
    walls = [r["wall"] for r in runs if r["wall"] is not None]
    rss = [r["rss"] for r in runs if r["rss"] is not None]
    b = runs[0]["bytes"]
    s = median(secs)
    w = median(walls)
    return {"bytes": b, "seconds": s, "min": min(secs), "max": max(secs),
            "gbps": b / s / 1e9 if s else None,
            "wall": w, "wall_gbps": b / w / 1e9 if w else None,
            "rss": median(rss), "faults": median([r["faults"] for r in runs if "faults" in r]),
            "runs": runs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--fresh-read", required=True)
    ap.add_argument("--dcpp", required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--size-mb", default="?")
    ap.add_argument("--results", default=None, help="also write the numbers here as JSON")
    args = ap.parse_args()
    if args.repeat < 1 or args.warmup < 0:
        ap.error("--repeat must be >= 1 and --warmup >= 0")

    ckpt = os.path.abspath(args.ckpt)
    try:
        with open("/proc/loadavg") as f:
            loadavg = " ".join(f.read().split()[:3])
    except OSError:
        loadavg = "?"
    with open(os.path.join(os.path.dirname(ckpt), "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    tensor_bytes = sum(t["nbytes"] for t in expected["tensors"].values())
    n_tensors = len(expected["tensors"])
    files = sorted(glob.glob(os.path.join(ckpt, "*.distcp")))
    if not files:
        raise BenchError("no .distcp files in %s" % ckpt)
    file_bytes = sum(os.path.getsize(p) for p in files)

    warnings, failures = [], []
    rows = {}
    info = {}

    def step(name, fn):
        print("bench: measuring %s ..." % name, file=sys.stderr, flush=True)
        try:
            return fn()
        except BenchError as e:
            failures.append("%s: %s" % (name, e))
            return None

    r = step("(b) fresh read", lambda: measure_fresh(args.fresh_read, files, args.warmup,
                                                      args.repeat))
    if r:
        rows["fresh"] = summarize(r)
    r = step("(b2) read into a prefaulted buffer", lambda: measure_fresh(
        args.fresh_read, files, args.warmup, args.repeat, prefaulted=True))
    if r:
        rows["prefaulted"] = summarize(r)
    r = step("(a) PyTorch 1.13 load_state_dict", lambda: measure_torch(ckpt, args.warmup,
                                                                        args.repeat))
    if r:
        j, runs, torch_rss = r
        rows["torch"] = summarize(runs)
        info["torch"] = {k: j[k] for k in ("torch", "intra_op_threads", "alloc_seconds",
                                            "warmup_seconds")}
        info["torch"]["process_peak_rss"] = torch_rss
        if j["bytes"] != tensor_bytes:
            warnings.append("PyTorch loaded %d tensor bytes, expected.json says %d"
                            % (j["bytes"], tensor_bytes))
    missing = dcpp_has_load(args.dcpp)
    dcpp_cmds = {}
    if missing:
        failures.append("(c) dcpp load: " + missing)
    else:
        configs = [("dcpp", args.threads)]
        if args.threads != 1:
            configs.append(("dcpp1", 1))
        for key, th in configs:
            label = "(c) dcpp load" + ("" if th is None else " --threads %d" % th)
            r = step(label, lambda th=th: measure_dcpp(args.dcpp, ckpt, th, args.warmup,
                                                       args.repeat, tensor_bytes, warnings))
            if r:
                cmd, runs, extra = r
                rows[key] = summarize(runs)
                dcpp_cmds[key] = (th, extra)

    # ---------------------------------------------------------------- table
    ncpu = os.cpu_count()
    print()
    print("dcpp bench: --size-mb %s checkpoint %s" % (args.size_mb, ckpt))
    print("  %d tensors, %d tensor bytes (%.3f GB); %d .distcp files, %d bytes (%.3f GB); "
          "%d ranks" % (n_tensors, tensor_bytes, tensor_bytes / 1e9, len(files), file_bytes,
                        file_bytes / 1e9, expected.get("world_size", 0)))
    print("  page cache WARM: %d untimed warm-up run(s) before %d timed run(s) of each "
          "measurement; caches are not dropped, so this is memory-to-memory, not disk" % (
              args.warmup, args.repeat))
    print("  medians of %d runs (min-max in brackets); GB = 1e9 bytes; %s CPUs, load average "
          "%s at start" % (args.repeat, ncpu, loadavg))
    print()
    hdr = "%-44s %8s  %-22s %9s %11s" % ("measurement", "GB/s", "seconds [min-max]",
                                          "wall GB/s", "peak RSS")
    print(hdr)
    print("-" * len(hdr))

    def row(label, key, note=""):
        s = rows.get(key)
        if s is None:
            print("%-44s %8s  %-22s %9s %11s  %s" % (label, "FAILED", "-", "-", "-", note))
            return
        rng = "%.3f [%.3f-%.3f]" % (s["seconds"], s["min"], s["max"])
        rss = "-" if s["rss"] is None else "%.0f MiB" % (s["rss"] / 2**20)
        print("%-44s %8.3f  %-22s %9s %11s" % (label, s["gbps"], rng,
                                                fmt(s["wall_gbps"], ".3f"), rss))

    row("(a) PyTorch 1.13 load_state_dict, prealloc", "torch")
    if "torch" in rows:
        t = rows["torch"]
        a = info["torch"]["alloc_seconds"]
        print("%-44s %8.3f  %s" % ("    (info) + torch.zeros allocation time",
                                     tensor_bytes / (t["seconds"] + a) / 1e9,
                                     "%.3f (%.3f + %.3f)" % (t["seconds"] + a, t["seconds"], a)))
    row("(b) fresh read: 1 thread, mmap+read()", "fresh")
    row("    (info) same, one prefaulted buffer", "prefaulted")
    if missing:
        print("%-44s %8s  %s" % ("(c) dcpp load --json", "MISSING", "(see below)"))
    else:
        row("(c) dcpp load --json" + ("" if args.threads is None
                                      else " --threads %d" % args.threads), "dcpp")
        if "dcpp1" in rows or args.threads != 1:
            row("(c) dcpp load --json --threads 1", "dcpp1")
    print()

    def ratio_line(label, value, target, ok):
        if value is None:
            print("%-44s %8s   target %-8s %s" % (label, "-", target, "n/a"))
        else:
            print("%-44s %7.2fx   target %-8s %s" % (label, value, target,
                                                      "PASS" if ok(value) else "MISS"))

    targets_ok = True
    for key, suffix in (("dcpp", ""), ("dcpp1", " (--threads 1)")):
        if key == "dcpp1" and key not in rows:
            continue
        if key == "dcpp" and args.threads is not None:
            suffix = " (--threads %d)" % args.threads
        d = rows.get(key)
        t, f = rows.get("torch"), rows.get("fresh")
        checks = [
            ("dcpp / PyTorch, GB/s" + suffix, d and t and d["gbps"] / t["gbps"], ">= 5x",
             lambda v: v >= 5.0),
            ("dcpp / fresh read, GB/s" + suffix, d and f and d["gbps"] / f["gbps"], ">= 0.9x",
             lambda v: v >= 0.9),
            ("dcpp peak RSS / tensor bytes" + suffix, d and d["rss"] / tensor_bytes, "<= 1.1x",
             lambda v: v <= 1.1),
        ]
        for label, v, tgt, ok in checks:
            ratio_line(label, v or None, tgt, ok)
            if key == "dcpp" and v and not ok(v):
                targets_ok = False
    print()
    print("GB/s: (a) tensor bytes / load_state_dict() seconds (timed inside one python process, "
          "destinations preallocated and zeroed outside the timed region); (b) .distcp file "
          "bytes / seconds from before the first open() to after the last munmap() (a fresh "
          "anonymous mmap of each file's size, read() into it, page faults included; (info): "
          "the same reads into one buffer faulted in before the clock, i.e. the copy alone); (c) tensor bytes / the "
          "\"seconds\" dcpp reports in its JSON. wall GB/s: the same bytes / process wall time "
          "(fork to exit). peak RSS: the process's ru_maxrss from wait4(), as /usr/bin/time "
          "-f %M reports it.")
    faults = ["%s %d" % (name, rows[k]["faults"]) for k, name in (
        ("fresh", "fresh read"), ("prefaulted", "prefaulted read"), ("dcpp", "dcpp load"),
        ("dcpp1", "dcpp load --threads 1")) if k in rows and rows[k]["faults"] is not None]
    if faults:
        print("minor page faults (median; fresh/prefaulted read: timed region only, dcpp: "
              "whole process; 4 KiB pages: %d for the tensor bytes): %s" % (
                  -(-tensor_bytes // 4096), ", ".join(faults)))
    base = getattr(dcpp_has_load, "baseline", None)
    if base and not missing:
        print("dcpp baseline (`dcpp load --help`, no checkpoint): process wall %.3f s, peak RSS "
              "%.0f MiB" % (base[0], base[1] / 2**20))
        info["dcpp_baseline"] = {"wall": base[0], "rss": base[1]}
    if "torch" in info:
        ti = info["torch"]
        print("PyTorch %s, %d intra-op threads; preallocation %.3f s; warm-up load %s s; "
              "process peak RSS %.0f MiB" % (
                  ti["torch"], ti["intra_op_threads"], ti["alloc_seconds"],
                  ", ".join("%.3f" % x for x in ti["warmup_seconds"]) or "-",
                  ti["process_peak_rss"] / 2**20))
    for key, (th, extra) in dcpp_cmds.items():
        if extra:
            print("dcpp load%s also reported: %s" % ("" if th is None else " --threads %d" % th,
                                                     json.dumps(extra)[:300]))
    for w in warnings:
        print("WARNING: " + w)
    for fl in failures:
        print("FAILED: " + fl)

    if args.results:
        doc = {"ckpt": ckpt, "tensor_bytes": tensor_bytes, "file_bytes": file_bytes,
               "repeat": args.repeat, "warmup": args.warmup, "threads": args.threads,
               "rows": rows, "info": info, "warnings": warnings, "failures": failures,
               "targets_met": targets_ok and not failures}
        with open(args.results, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, OSError, ValueError, KeyError) as e:
        print("tools/bench: error: %s" % e, file=sys.stderr)
        sys.exit(1)
