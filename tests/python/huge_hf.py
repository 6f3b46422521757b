#!/usr/bin/env python3
"""A safetensors file whose one float32 tensor "big" is ROWS x COLS, on disk as a sparse file,
and checks of what dcpp converts it to, reading only a few rows.

    huge_hf.py make FILE ROWS COLS        header by the format's spec (8-byte length, JSON),
                                          the data a hole except three marker rows
    huge_hf.py check KIND PATH ROWS COLS  KIND: pt (torch.load with mmap), safetensors (one
                                          file), hf (a model directory), dcp (torch 2.13's
                                          FileSystemReader metadata)

The markers: row 0 holds 0, 1, 2, ...; row ROWS // 2 holds -1, -2, ...; the last row 7.5
everywhere. Every other row must read as zeros. `check` reads the three marker rows and two
zero rows with torch 2.13 and the safetensors library; prints OK, or FAIL lines and exit 1.
"""
import json
import os
import struct
import sys

import torch


def marker_rows(rows, cols):
    return {
        0: torch.arange(cols, dtype=torch.float32),
        rows // 2: -torch.arange(1, cols + 1, dtype=torch.float32),
        rows - 1: torch.full((cols,), 7.5),
    }


def make(path, rows, cols):
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "big": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [0, rows * cols * 4]}})
    header += " " * (-len(header) % 8)
    start = 8 + len(header)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode())
        f.truncate(start + rows * cols * 4)
        for row, values in marker_rows(rows, cols).items():
            f.seek(start + row * cols * 4)
            f.write(values.numpy().tobytes())


def probe_rows(rows):
    return sorted({0, 1, rows // 2, rows // 2 + 1, rows - 1})


def expect_rows(get_row, rows, cols, fails):
    markers = marker_rows(rows, cols)
    for row in probe_rows(rows):
        want = markers.get(row, torch.zeros(cols))
        got = get_row(row)
        if got.dtype != torch.float32 or not torch.equal(got.reshape(-1), want):
            fails.append(f"row {row} differs")


def check(kind, path, rows, cols):
    fails = []
    if kind == "pt":
        t = torch.load(path, mmap=True, weights_only=True)["big"]
        if t.shape != (rows, cols):
            fails.append(f"shape {tuple(t.shape)}")
        else:
            expect_rows(lambda r: t[r], rows, cols, fails)
    elif kind in ("safetensors", "hf"):
        from safetensors import safe_open
        if kind == "hf":
            names = sorted(os.listdir(path))
            if names != ["model.safetensors"]:
                fails.append(f"model directory holds {names}")
            path = os.path.join(path, "model.safetensors")
        with safe_open(path, "pt") as f:
            if f.metadata() != {"format": "pt"}:
                fails.append(f"__metadata__ {f.metadata()}")
            s = f.get_slice("big")
            if s.get_shape() != [rows, cols]:
                fails.append(f"shape {s.get_shape()}")
            else:
                expect_rows(lambda r: s[r:r + 1], rows, cols, fails)
    elif kind == "dcp":
        from torch.distributed.checkpoint import FileSystemReader
        md = FileSystemReader(path).read_metadata().state_dict_metadata["big"]
        if tuple(md.size) != (rows, cols) or md.properties.dtype != torch.float32:
            fails.append(f"metadata {md}")
    else:
        fails.append("unknown kind " + kind)
    for f in fails:
        print("FAIL", kind, f)
    print("OK" if not fails else f"{len(fails)} failures")
    return 1 if fails else 0


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    sys.exit(check(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
