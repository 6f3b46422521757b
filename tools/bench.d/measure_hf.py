#!/usr/bin/env python3
"""The safetensors half of tools/bench (`--only hf`; torch 2.13's virtualenv runs it).

    measure_hf.py --work DIR --size-mb N --fresh-read BIN --dcpp BIN [--threads N]
                  [--repeat 3] [--warmup 1] [--results FILE]

Writes once (kept while DIR/model/.complete says the same size) a model directory of about
SIZE MiB in 3 shards, as a Hugging Face repository holds one: `safetensors.torch.save_file` per
shard (bfloat16 and float32 weights of a transformer's shapes) and model.safetensors.index.json.
Then, each --warmup times untimed and --repeat times timed, in this order:
  (a) fresh_read over the 3 shard files (1 thread, into fresh memory: the machine's bound);
  (b) safetensors.torch.load_file of every shard, each tensor copied into a fresh tensor
      (`clone()`: the values in memory the process owns, as a loader hands them over);
  (c) torch 2.13 dcp.load of a state dict of fresh (torch.empty) tensors with
      HuggingFaceStorageReader(DIR/model, thread_count=1 and 3);
  (d) `dcpp load --json DIR/model` (and with --threads 1): process wall time and peak RSS.
Every run is a fresh process (fresh memory, as for each `dcpp load`); (b) and (c) are timed
inside it from before the first allocation to after the last tensor is filled (imports
excluded). The page cache is warm (nothing is dropped).
Prints the table (medians) and dcpp's speed over the faster of (b) and (c) (target >= 2x).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from measure import BenchError, last_json, run_proc, tail  # noqa: E402

# One load in a fresh process (as each `dcpp load` is): fresh memory, nothing the allocator
# kept from an earlier run; timed from before the first allocation to after the last tensor.
TORCH_SIDE = r'''
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader
from safetensors.torch import load_file
mode, model = sys.argv[1], sys.argv[2]
index = json.load(open(model + "/model.safetensors.index.json"))
files = sorted(set(index["weight_map"].values()))
spec = json.load(open(model + "/spec.json"))
total = sum(s["nbytes"] for s in spec.values())
t0 = time.perf_counter()
if mode == "load_file":
    out = {}
    for f in files:
        for k, v in load_file(model + "/" + f).items():
            out[k] = v.clone()
else:
    out = {k: torch.empty(s["shape"], dtype=getattr(torch, s["dtype"])) for k, s in spec.items()}
    dcp.load(out, storage_reader=HuggingFaceStorageReader(model, thread_count=int(mode[4:])))
t = time.perf_counter() - t0
got = sum(v.numel() * v.element_size() for v in out.values())
if got != total:
    raise SystemExit("%s loaded %d bytes, expected %d" % (mode, got, total))
print(json.dumps({"bytes": total, "seconds": t}))
'''


MAKE_MODEL = r'''
import json, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
model, size_mb = Path(sys.argv[1]), int(sys.argv[2])
model.mkdir(parents=True, exist_ok=True)
for f in model.glob("*"):
    f.unlink()
# A transformer's layers: per layer 4 square bf16 projections, 2 rectangular f32 ones and a
# norm. Width chosen so that the total is about SIZE MiB.
width = 1024
per_layer = 4 * width * width * 2 + 2 * width * (width * 2) * 4 + width * 4
layers = max(1, (size_mb << 20) // per_layer)
g = torch.Generator().manual_seed(0)
tensors = {}
for layer in range(layers):
    p = "model.layers.%d." % layer
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        tensors[p + "self_attn.%s.weight" % name] = torch.randn(width, width, generator=g).to(torch.bfloat16)
    tensors[p + "mlp.up_proj.weight"] = torch.randn(width * 2, width, generator=g)
    tensors[p + "mlp.down_proj.weight"] = torch.randn(width, width * 2, generator=g)
    tensors[p + "input_layernorm.weight"] = torch.randn(width, generator=g)
shards, sizes = [{}, {}, {}], [0, 0, 0]
for k in sorted(tensors):  # greedy by size: three shards of about equal bytes
    i = sizes.index(min(sizes))
    shards[i][k] = tensors[k]
    sizes[i] += tensors[k].numel() * tensors[k].element_size()
weight_map = {}
for i, shard in enumerate(shards):
    name = "model-%05d-of-00003.safetensors" % (i + 1)
    save_file(shard, str(model / name), metadata={"format": "pt"})
    weight_map.update({k: name for k in shard})
(model / "model.safetensors.index.json").write_text(json.dumps(
    {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
(model / "spec.json").write_text(json.dumps({k: {"shape": list(t.shape), "dtype": str(t.dtype)[6:],
                                                 "nbytes": t.numel() * t.element_size()} for k, t in tensors.items()}))
'''


def make_model(model, size_mb):
    """Written once by a child process: this one stays small, so that the peak RSS that wait4()
    reports for the processes it starts is theirs (Linux carries a parent's peak over fork+exec)."""
    marker = model / ".complete"
    if marker.exists() and marker.read_text() == str(size_mb):
        print("bench: reusing the model directory %s" % model, file=sys.stderr)
        return
    print("bench: writing a %d MiB model directory in 3 shards into %s" % (size_mb, model), file=sys.stderr)
    rc, out, err, wall, rss = run_proc([sys.executable, "-c", MAKE_MODEL, str(model), str(size_mb)])
    if rc != 0:
        raise BenchError("writing the model failed (exit %d):\n%s" % (rc, tail(err)))
    marker.write_text(str(size_mb))


def measure_torch(mode, model, warmup, repeat):
    return measure_proc([sys.executable, "-c", TORCH_SIDE, mode, str(model)], warmup, repeat,
                        lambda j: {"bytes": j["bytes"], "seconds": j["seconds"]})


def measure_proc(cmd, warmup, repeat, parse):
    runs = []
    for i in range(warmup + repeat):
        rc, out, err, wall, rss = run_proc(cmd)
        if rc != 0:
            raise BenchError("`%s` failed (exit %d):\n%s" % (" ".join(cmd), rc, tail(err or out)))
        if i >= warmup:
            runs.append(dict(parse(last_json(out, cmd[0])), wall=wall, rss=rss))
    return runs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--fresh-read", required=True)
    ap.add_argument("--dcpp", required=True)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--results")
    a = ap.parse_args()
    model = Path(a.work) / "model"
    try:
        make_model(model, a.size_mb)
        files = sorted(str(f) for f in model.glob("*.safetensors"))
        rows = {}
        rows["fresh read, 1 thread (bound)"] = (measure_proc(
            [a.fresh_read] + files, a.warmup, a.repeat, lambda j: {"bytes": j["bytes"], "seconds": j["seconds"]}), None)
        rows["safetensors load_file + clone"] = (measure_torch("load_file", model, a.warmup, a.repeat), None)
        rows["torch dcp.load HF reader, 1 thread"] = (measure_torch("dcp_1", model, a.warmup, a.repeat), None)
        rows["torch dcp.load HF reader, 3 threads"] = (measure_torch("dcp_3", model, a.warmup, a.repeat), None)
        dcpp = [a.dcpp, "load", "--json"] + (["--threads", str(a.threads)] if a.threads else [])
        parse = lambda j: {"bytes": j["bytes"], "seconds": j["seconds"]}  # noqa: E731
        rows["dcpp load"] = (measure_proc(dcpp + [str(model)], a.warmup, a.repeat, parse), None)
        rows["dcpp load --threads 1"] = (measure_proc([a.dcpp, "load", "--json", "--threads", "1", str(model)],
                                                      a.warmup, a.repeat, parse), None)
    except BenchError as e:
        print("measure_hf.py: %s" % e, file=sys.stderr)
        return 1

    med = {k: statistics.median(r["seconds"] for r in runs) for k, (runs, _) in rows.items()}
    total = rows["dcpp load"][0][0]["bytes"]
    print("\nsafetensors model directory: %.0f MiB in 3 shards (%s), page cache warm; medians of %d runs"
          % (total / 2**20, model, a.repeat))
    print("%-38s %9s %9s %12s" % ("", "seconds", "GB/s", "peak RSS"))
    for k, (runs, _) in rows.items():
        print("%-38s %9.3f %9.2f %8.0f MiB" % (k, med[k], total / med[k] / 1e9,
                                              statistics.median(r["rss"] for r in runs) / 2**20))
    torch_best = min(med["safetensors load_file + clone"], med["torch dcp.load HF reader, 1 thread"],
                     med["torch dcp.load HF reader, 3 threads"])
    speedup = torch_best / med["dcpp load"]
    print("dcpp load vs the faster torch loader: %.2fx (target >= 2x) %s" % (speedup, "ok" if speedup >= 2 else "MISSED"))
    print("dcpp load vs the fresh-read bound: %.2fx" % (med["fresh read, 1 thread (bound)"] / med["dcpp load"]))
    print("(each run a fresh process; seconds timed inside it, from the first allocation to the last tensor "
          "(dcpp: its own --json seconds); peak RSS of the process, Python's imports included)")
    if a.results:
        Path(a.results).write_text(json.dumps({"bytes": total, "median_seconds": med, "speedup_vs_torch": speedup},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
