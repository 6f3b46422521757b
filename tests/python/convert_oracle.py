"""torch's own dtype conversions, the oracle for dcpp's converting loads.

usage: /usr/bin/python3 convert_oracle.py CASE_DIR OUT_DIR

For every tensor of CASE_DIR/expected.json (a make_checkpoint.py case) whose dtype dcpp
converts, and every other such dtype, writes torch's `full.to(target)` as raw bytes to
OUT_DIR/<n>.bin and lists them in OUT_DIR/manifest.json as {"key", "from", "to", "file"}.
A float-to-integer pair is listed only when every value is finite and inside the target's
range: C++ and torch leave the others undefined. Exit 1 with a message on failure.
"""
import json
import os
import sys

import torch

DTYPES = {
    "bool": torch.bool, "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16,
    "int32": torch.int32, "int64": torch.int64, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
}


def full_tensor(case_dir, entry):
    dtype = DTYPES[entry["dtype"]]
    with open(os.path.join(case_dir, entry["file"]), "rb") as f:
        raw = bytearray(f.read())
    flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.zeros(0, dtype=torch.uint8)
    return flat.view(dtype).reshape(entry["shape"])


def well_defined(t, target):
    if t.dtype.is_floating_point and not target.is_floating_point and target != torch.bool:
        if t.numel() == 0:
            return True
        d = t.double()
        info = torch.iinfo(target)
        lo, hi = float(info.min), float(info.max) + 1.0  # both exact in float64
        return bool(torch.isfinite(d).all()) and bool((d >= lo).all()) and bool((d < hi).all())
    return True


def main():
    case_dir, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(case_dir, "expected.json")) as f:
        expected = json.load(f)
    manifest = []
    for key, entry in expected["tensors"].items():
        if entry["dtype"] not in DTYPES:
            continue
        t = full_tensor(case_dir, entry)
        for name, target in DTYPES.items():
            if name == entry["dtype"] or not well_defined(t, target):
                continue
            converted = t.to(target).contiguous()
            path = os.path.join(out_dir, "%d.bin" % len(manifest))
            with open(path, "wb") as f:
                f.write(converted.view(-1).view(torch.uint8).numpy().tobytes() if converted.numel() else b"")
            manifest.append({"key": key, "from": entry["dtype"], "to": name, "file": path})
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one line, as the other helpers do
        print("convert_oracle.py: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        sys.exit(1)
