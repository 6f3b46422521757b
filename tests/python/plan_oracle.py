#!/usr/bin/env python3
"""torch 2.13's coordinator as an oracle for dcpp's (tests/save, suite global_plan): runs
DefaultSavePlanner.create_global_plan (de-duplication, create_default_global_save_plan and
_validate_global_plan) on save plans the C++ test generated, and prints what it made of them.

Usage (the repository's virtualenv, .venv/bin/python):

    plan_oracle.py IN.json OUT.json

IN: {"cases": [{"lowest": bool, "plans": [[ITEM, ...], ...]}, ...]} where ITEM is
    {"fqn": str, "type": "tensor" | "shard" | "byte_io"} and, for tensors and shards,
    "offsets", "sizes", "size" (lists of ints) and "dtype" (torch's name).
OUT: {"cases": [RESULT, ...]}, one per case: {"error": str} when torch refused the plans, else
    {"plans": [[[fqn, offsets or null, index or null], ...], ...],
     "metadata": [[fqn, "bytes"] or [fqn, dtype, size, [[offsets, sizes], ...]], ...]}
    (metadata in torch's dict order).
"""
import json
import sys

import torch
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
)
from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType

TYPES = {"tensor": WriteItemType.TENSOR, "shard": WriteItemType.SHARD, "byte_io": WriteItemType.BYTE_IO}


def write_item(spec):
    kind = TYPES[spec["type"]]
    if kind == WriteItemType.BYTE_IO:
        return WriteItem(index=MetadataIndex(spec["fqn"]), type=kind)
    offsets = torch.Size(spec["offsets"])
    data = TensorWriteData(
        chunk=ChunkStorageMetadata(offsets=offsets, sizes=torch.Size(spec["sizes"])),
        properties=TensorProperties(dtype=getattr(torch, spec["dtype"])),
        size=torch.Size(spec["size"]),
    )
    return WriteItem(index=MetadataIndex(spec["fqn"], offsets), type=kind, tensor_data=data)


def run_case(case):
    plans = [SavePlan([write_item(i) for i in plan], planner_data={}) for plan in case["plans"]]
    planner = DefaultSavePlanner(dedup_save_to_lowest_rank=case["lowest"])
    try:
        global_plans, metadata = planner.create_global_plan(plans)
    except (ValueError, AssertionError) as e:
        return {"error": str(e)[:200]}
    out_plans = [
        [[i.index.fqn, list(i.index.offset) if i.index.offset is not None else None, i.index.index] for i in p.items]
        for p in global_plans
    ]
    out_md = []
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, BytesStorageMetadata):
            out_md.append([fqn, "bytes"])
        else:
            dtype = str(md.properties.dtype).removeprefix("torch.")
            out_md.append([fqn, dtype, list(md.size), [[list(c.offsets), list(c.sizes)] for c in md.chunks]])
    return {"plans": out_plans, "metadata": out_md}


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)["cases"]
    with open(sys.argv[2], "w") as f:
        json.dump({"cases": [run_case(c) for c in cases]}, f)


if __name__ == "__main__":
    main()
