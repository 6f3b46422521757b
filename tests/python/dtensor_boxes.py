#!/usr/bin/env python3
"""Every rank's box of many DTensor layouts, computed by torch 2.13 itself (the oracle that
dcp.layout's `local_box` is compared with; nothing here uses dcpp).

    .venv/bin/python tests/python/dtensor_boxes.py

For global shapes (0-dim to 3-D, uneven, empty, fewer rows than ranks) × layouts (1-D meshes
of 1..8 ranks with Shard(0), Shard(1), Replicate(); 2x2, 2x3, 3x2 and 4x2 meshes with every
pair of Shard(0), Shard(1), Replicate(), nested Shard(d)×Shard(d) included) prints one JSON
document: a list of {"shape", "mesh", "placements": ["S0" | "S1" | "R", ...], "boxes":
[[offsets, sizes] per rank]}. Each rank's box is torch's
`_compute_local_shape_and_global_offset(shape, mesh shape, coordinate, placements)` — the
function `compute_local_shape_and_global_offset` calls with a DeviceMesh's shape and the
rank's coordinate, which DCP's save records as chunk offsets and sizes — with the coordinate
found in `torch.arange(world).view(mesh)`, the rank layout `init_device_mesh` uses. No process
group is needed. Layouts that shard a dim the tensor lacks are skipped (torch asserts).
"""

import itertools
import json
import sys

import torch
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
from torch.distributed.tensor.placement_types import Replicate, Shard

SHAPES = [(), (0,), (1,), (2,), (3,), (7,), (10,), (16,), (120,), (0, 4), (4, 0), (1, 1), (2, 3),
          (5, 10), (7, 9), (10, 6), (10, 3), (3, 17), (9, 5), (13, 1), (3, 4, 5), (6, 1, 8)]
PLACEMENTS = {"S0": Shard(0), "S1": Shard(1), "R": Replicate()}
MESHES_1D = [(n,) for n in range(1, 9)]
MESHES_2D = [(2, 2), (2, 3), (3, 2), (4, 2)]


def layouts():
    for mesh in MESHES_1D:
        for p in PLACEMENTS:
            yield mesh, (p,)
    for mesh in MESHES_2D:
        for pair in itertools.product(PLACEMENTS, repeat=2):
            yield mesh, pair


def main():
    out = []
    for shape in SHAPES:
        for mesh, names in layouts():
            if any(n.startswith("S") and int(n[1:]) >= len(shape) for n in names):
                continue
            ranks = torch.arange(torch.Size(mesh).numel()).view(mesh)
            boxes = []
            for r in range(ranks.numel()):
                coord = (ranks == r).nonzero()[0].tolist()
                sizes, offsets = _compute_local_shape_and_global_offset(
                    shape, mesh, coord, [PLACEMENTS[n] for n in names])
                boxes.append([list(offsets), list(sizes)])
            out.append({"shape": list(shape), "mesh": list(mesh), "placements": list(names),
                        "boxes": boxes})
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
