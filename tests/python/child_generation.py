#!/usr/bin/env python3
"""Writes, with torch 2.13's dcp.save, the state dict that tests/save/save_child.cpp saves for
generation GEN (tests/save/child_values.hpp): the crash tests replace such a torch-written
checkpoint with dcpp and check that a crash leaves torch's or dcpp's, complete.

Usage (the repository's virtualenv): child_generation.py DIR GEN MB
"""

import sys

import numpy as np
import torch
import torch.distributed.checkpoint as dcp

M64 = (1 << 64) - 1
DATA_TENSORS = 4
MARKER_ELEMS = 1024


def data(gen, i, elems):
    # child_values::data: xorshift64 seeded by the generation and the tensor's index.
    s = (gen * 1000003 + i * 7919 + 1) & M64
    out = np.empty(elems, dtype=np.uint32)
    for k in range(elems):
        s ^= (s << 13) & M64
        s ^= s >> 7
        s ^= (s << 17) & M64
        out[k] = s & 0xFFFFFFFF
    return torch.from_numpy(out.view(np.float32))


def main():
    out, gen, mb = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    elems = int(mb * (1 << 20) / 4 / DATA_TENSORS)
    state = {
        "marker": torch.full((MARKER_ELEMS,), gen, dtype=torch.int64),
        "data": [data(gen, i, elems) for i in range(DATA_TENSORS)],
        "generation": gen,
    }
    dcp.save(state, checkpoint_id=out, no_dist=True)
    print("saved")


if __name__ == "__main__":
    main()
