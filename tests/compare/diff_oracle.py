"""`dcpp diff` against torch 2.13's own comparisons, on checkpoints torch 2.13 writes.

usage: diff_oracle.py DCPP (run by torch 2.13's Python, $DCPP_PYTHON2X)

Pairs: the same values saved twice; one element changed; small noise (torch.allclose decides
with and without tolerances); a NaN on both sides (bit-exact, --rtol, --equal-nan); a dtype
change; a missing and an added key; a changed object; and the same tensors as a DCP checkpoint
of 4 Gloo ranks (DTensor Shard(0)), a Hugging Face directory of two safetensors shards and a
torch.save .pt file. Each verdict (exit status, "same") comes from torch.equal on the bit
patterns, or torch.allclose/isclose in float64 with the tolerances given; the count, first index, max abs
and max rel of differing elements from torch's tensors in float64.
"""
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

DCPP = sys.argv[1]
INT_OF = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def base_state():
    g = torch.Generator().manual_seed(11)
    return {
        "layer.weight": torch.randn(37, 19, generator=g),
        "layer.bias": torch.randn(19, generator=g, dtype=torch.float64),
        "emb": torch.randn(12, 8, generator=g).to(torch.bfloat16),
        "half": torch.randn(5, 4, generator=g).to(torch.float16),
        "ids": torch.arange(-30, 30, dtype=torch.int64).reshape(6, 10),
        "mask": torch.rand(21, generator=g) > 0.5,
        "scale": torch.tensor(3.5),
    }


def clone(state):
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def diff(a, b, *flags):
    done = subprocess.run([DCPP, "diff", "--json", *flags, a, b], capture_output=True, text=True)
    assert done.returncode in (0, 1), (done.returncode, done.stderr)
    report = json.loads(done.stdout)
    assert report["same"] == (done.returncode == 0), report
    return report


def bits(t):
    return t.view(INT_OF[t.element_size()]) if t.dtype != torch.bool else t


def check_values(report, key, x, y, rtol=None, atol=None, equal_nan=False):
    """The report's entry for `key` against torch's comparison of x and y."""
    if rtol is None and atol is None:
        differ = bits(x) != bits(y)
        if equal_nan and x.is_floating_point():
            differ &= ~(x.isnan() & y.isnan())
        same = torch.equal(bits(x), bits(y)) or not differ.any()
    else:
        rtol = 1e-5 if rtol is None else rtol
        atol = 1e-8 if atol is None else atol
        # dcpp applies the tolerances in float64, whatever the dtype.
        same = torch.allclose(x.double(), y.double(), rtol=rtol, atol=atol, equal_nan=equal_nan)
        differ = ~torch.isclose(x.double(), y.double(), rtol=rtol, atol=atol, equal_nan=equal_nan)
    entries = [d for d in report["differences"] if d["key"] == key]
    if same:
        assert not entries, (key, entries)
        return
    (d,) = entries
    assert d["what"] == "values" and d["count"] == int(differ.sum()) and d["elements"] == x.numel(), (key, d)
    assert d["first_index"] == differ.nonzero()[0].tolist(), (key, d)
    xs, ys = x.double()[differ], y.double()[differ]
    ok = ~(xs.isnan() | ys.isnan())
    err = (xs - ys).abs()[ok]
    rel = torch.where(err == 0, torch.zeros_like(err), err / ys[ok].abs())
    want_abs = float(err.max()) if err.numel() else 0.0
    want_rel = float(rel.max()) if rel.numel() else 0.0
    assert math.isclose(d["max_abs"], want_abs, rel_tol=1e-12), (key, d, want_abs)
    assert math.isclose(d["max_rel"], want_rel, rel_tol=1e-12) or d["max_rel"] == want_rel, (key, d, want_rel)


def save(state, path):
    dcp.save(state, checkpoint_id=path)
    return path


# ---- 4 Gloo ranks: every tensor a DTensor of rows (Shard(0)) on a 1-D mesh.
def rank_main(rank, port, path):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=4,
                            timeout=timedelta(seconds=120))
    try:
        mesh = init_device_mesh("cpu", (4,))
        state = {k: distribute_tensor(v, mesh, [Shard(0)]) if v.dim() else v for k, v in base_state().items()}
        dcp.save(state, checkpoint_id=path)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    root = tempfile.mkdtemp(prefix="dcp-diff-")
    try:
        import torch.multiprocessing as mp
        import torch.distributed.tensor  # noqa: F401  (imported before the fork)
        ranks4 = os.path.join(root, "ranks4")
        mp.start_processes(rank_main, args=(free_port(), ranks4), nprocs=4, join=True, start_method="fork")

        base = base_state()
        a = save(dict(base, config={"lr": 0.1, "betas": [0.9, 0.99]}, step=3), os.path.join(root, "a"))
        same = save(dict(clone(base), config={"lr": 0.1, "betas": [0.9, 0.99]}, step=3), os.path.join(root, "same"))
        r = diff(a, same)
        keys_a = dcp.FileSystemReader(a).read_metadata().state_dict_metadata  # config flattened: config.lr, ...
        assert r["same"] and r["compared"] == len(keys_a), r

        # One element changed.
        one = clone(base)
        one["layer.weight"][20, 7] += 0.25
        one["ids"][4, 2] = 1000
        one["mask"][3] = not bool(one["mask"][3])
        p = save(dict(one, config={"lr": 0.1, "betas": [0.9, 0.99]}, step=3), os.path.join(root, "one"))
        r = diff(a, p)
        assert not r["same"] and len(r["differences"]) == 3, r
        for k in ("layer.weight", "ids", "mask", "emb"):
            check_values(r, k, base[k], one[k])

        # Noise of about 1e-7 relative: the verdict and counts with tolerances are torch's.
        noisy = clone(base)
        g = torch.Generator().manual_seed(5)
        noisy["layer.weight"] = base["layer.weight"] * (1 + 1e-7 * torch.randn(37, 19, generator=g))
        noisy["half"] = (base["half"].float() + 0.004 * torch.randn(5, 4, generator=g)).half()
        p = save(noisy, os.path.join(root, "noisy"))
        a2 = save(base, os.path.join(root, "a2"))
        for flags, rtol, atol in [((), None, None), (("--rtol", "1e-5"), 1e-5, None),
                                  (("--rtol", "1e-9", "--atol", "0"), 1e-9, 0.0),
                                  (("--atol", "0.001"), None, 1e-3), (("--atol", "0.01"), None, 1e-2)]:
            r = diff(a2, p, *flags)
            for k in ("layer.weight", "half", "layer.bias"):
                check_values(r, k, base[k], noisy[k], rtol, atol)

        # NaN in the same place on both sides, and a NaN against a number.
        n1, n2 = clone(base), clone(base)
        for s in (n1, n2):
            s["layer.bias"][4] = float("nan")
        n2["emb"][2, 3] = float("nan")
        p1, p2 = save(n1, os.path.join(root, "nan1")), save(n2, os.path.join(root, "nan2"))
        for flags, rtol, equal_nan in [((), None, False), (("--equal-nan",), None, True),
                                       (("--rtol", "1e-5"), 1e-5, False), (("--rtol", "1e-5", "--equal-nan"), 1e-5, True)]:
            r = diff(p1, p2, *flags)
            for k in ("layer.bias", "emb"):
                check_values(r, k, n1[k], n2[k], rtol, None, equal_nan)

        # A dtype change, a missing key, an added key, a changed object.
        other = clone(base)
        other["emb"] = other["emb"].float()
        del other["ids"]
        other["extra"] = torch.zeros(2)
        p = save(dict(other, config={"lr": 0.2, "betas": [0.9, 0.99]}, step=3), os.path.join(root, "other"))
        r = diff(a, p)
        assert r["only_in_a"] == ["ids"] and r["only_in_b"] == ["extra"], r
        what = {d["key"]: d for d in r["differences"]}
        assert what["emb"]["what"] == "dtype" and what["emb"]["a"] == "bfloat16" and what["emb"]["b"] == "float32"
        assert what["config.lr"]["what"] == "object" and json.loads(what["config.lr"]["b"]) == 0.2, what
        assert "config.betas" not in what, what
        r = diff(a, p, "--keys", "^layer\\.")
        assert r["same"] and r["compared"] == 2, r

        # Complex values have no float64 form: compared bit-exactly even under tolerances.
        c1 = {"cplx": torch.randn(4, 3, dtype=torch.complex64, generator=g), "w": base["layer.weight"]}
        c2 = clone(c1)
        c2["cplx"][2, 1] += 1e-4j  # under --rtol 1e-3 as allclose sees it, but other bits
        c2["w"] = c2["w"] * (1 + 1e-7)
        p1, p2 = save(c1, os.path.join(root, "c1")), save(c2, os.path.join(root, "c2"))
        r = diff(p1, p2, "--rtol", "1e-3")
        (d,) = r["differences"]
        differ = bits(c1["cplx"]) != bits(c2["cplx"])
        assert d["key"] == "cplx" and d["count"] == int(differ.sum()) == 1, d
        assert d["first_index"] == differ.nonzero()[0].tolist() and d["max_abs"] is None, d

        # The same tensors in other layouts: 4 DCP ranks, a Hugging Face directory, a .pt file.
        hf = os.path.join(root, "hf")
        os.makedirs(hf)
        keys = list(base)
        save_file({k: base[k] for k in keys[:3]}, os.path.join(hf, "model-00001-of-00002.safetensors"))
        save_file({k: base[k] for k in keys[3:]}, os.path.join(hf, "model-00002-of-00002.safetensors"))
        pt = os.path.join(root, "model.pt")
        torch.save(base, pt)
        for x, y in [(ranks4, a2), (ranks4, hf), (hf, pt), (pt, ranks4)]:
            r = diff(x, y)
            assert r["same"] and r["compared"] == len(base), (x, y, r)
        torch.save(one, pt)
        r = diff(ranks4, pt)
        for k in ("layer.weight", "ids", "mask"):
            check_values(r, k, base[k], one[k])

        # The text form and its exit status.
        done = subprocess.run([DCPP, "diff", a, p], capture_output=True, text=True)
        assert done.returncode == 1 and "only in A: ids" in done.stdout and "different:" in done.stdout, done.stdout
        done = subprocess.run([DCPP, "diff", "--rtol", "x", a, p], capture_output=True, text=True)
        assert done.returncode == 2, done
        print("ok: dcpp diff agrees with torch on every pair")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
