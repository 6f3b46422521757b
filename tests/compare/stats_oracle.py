"""`dcpp inspect --stats` against numpy, on tensors torch 2.13 saves (NaN and Inf included).

usage: stats_oracle.py DCPP (run by torch 2.13's Python, $DCPP_PYTHON2X)

For every tensor of a DCP checkpoint, of a .safetensors file and of a .pt file holding the same
tensors: NaN, Inf and zero counts, and min, max, mean, std (ddof 0) and absmax of the finite
elements, computed by numpy in float64 from torch's values; the summary names exactly the
tensors that hold NaN or Inf, and --fail-on-nonfinite exits 1 only then.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

DCPP = sys.argv[1]


def state():
    g = torch.Generator().manual_seed(21)
    w = torch.randn(300, 70, generator=g) * 3 + 1
    w[5, 6], w[100, 3], w[299, 69] = float("nan"), float("inf"), float("-inf")
    e = torch.randn(64, 33, generator=g).to(torch.bfloat16)
    e[0, 0] = float("nan")
    h = (torch.randn(1000, generator=g) * 30000).to(torch.float16)  # past 65504: inf
    z = torch.zeros(40, 5)
    z[3, 1] = -0.0
    big = torch.randn(1 << 21, generator=g, dtype=torch.float64) * 1e6 + 1e9  # two tasks' worth
    return {
        "w": w, "emb": e, "half": h, "zeros": z, "big": big,
        "ids": torch.randint(-5, 6, (17, 3), generator=g),
        "u8": torch.randint(0, 256, (99,), generator=g, dtype=torch.uint8),
        "mask": torch.rand(50, generator=g) > 0.3,
        "scalar": torch.tensor(-2.5),
        "empty": torch.empty(0, 3),
        "allnan": torch.full((4,), float("nan")),
    }


def expect(t):
    x = t.double().numpy().reshape(-1) if t.dtype != torch.bool else t.numpy().reshape(-1).astype(np.float64)
    finite = x[np.isfinite(x)]
    want = {"nan": int(np.isnan(x).sum()), "inf": int(np.isinf(x).sum()), "zeros": int((finite == 0).sum()),
            "elements": int(x.size)}
    if finite.size:
        want.update(min=float(finite.min()), max=float(finite.max()), mean=float(finite.mean()),
                    std=float(finite.std()), absmax=float(np.abs(finite).max()))
    else:
        want.update(min=None, max=None, mean=None, std=None, absmax=None)
    return want


def stats(path, *flags):
    done = subprocess.run([DCPP, "inspect", "--stats", "--json", *flags, path], capture_output=True, text=True)
    return done.returncode, json.loads(done.stdout) if done.stdout else None, done


def main():
    root = tempfile.mkdtemp(prefix="dcp-stats-")
    try:
        s = state()
        ckpt = os.path.join(root, "ckpt")
        dcp.save(dict(s, note="objects are not tensors"), checkpoint_id=ckpt)
        st = os.path.join(root, "model.safetensors")
        save_file(s, st)
        pt = os.path.join(root, "model.pt")
        torch.save(s, pt)
        bad = {k for k, t in s.items() if t.is_floating_point() and not torch.isfinite(t).all()}
        assert bad == {"w", "emb", "half", "allnan"}, bad
        for path in (ckpt, st, pt):
            rc, report, done = stats(path)
            assert rc == 0, done.stderr
            got = {t["key"]: t for t in report["tensors"]}
            assert set(got) == set(s), (path, set(got))
            for key, t in s.items():
                want = expect(t)
                for field, value in want.items():
                    have = got[key][field]
                    if value is None or isinstance(value, int):
                        assert have == value, (path, key, field, have, value)
                    else:
                        assert math.isclose(have, value, rel_tol=1e-9, abs_tol=1e-12), (path, key, field, have, value)
                assert got[key]["dtype"] == str(t.dtype).removeprefix("torch.") and got[key]["shape"] == list(t.shape)
            assert set(report["nonfinite"]) == bad, report["nonfinite"]
            rc, _, _ = stats(path, "--fail-on-nonfinite")
            assert rc == 1
            rc, report, _ = stats(path, "--fail-on-nonfinite", "--keys", "^(ids|mask|scalar|zeros|big)$")
            assert rc == 0 and report["nonfinite"] == [] and len(report["tensors"]) == 5, report
        done = subprocess.run([DCPP, "inspect", "--stats", ckpt], capture_output=True, text=True)
        summary = done.stdout.strip().splitlines()[-1]
        assert done.returncode == 0 and summary.startswith("11 tensors, 4 hold NaN or Inf: "), done.stdout
        assert sorted(summary.split(": ", 1)[1].split(", ")) == sorted(bad), summary
        done = subprocess.run([DCPP, "inspect", "--fail-on-nonfinite", ckpt], capture_output=True, text=True)
        assert done.returncode == 2, done
        print("ok: dcpp inspect --stats agrees with numpy")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
