"""A torch 2.13 checkpoint whose one tensor is larger than a rank may allocate, on disk as a
sparse file.

    huge_tensor.py OUT_DIR ROWS COLS

torch 2.13's dcp.save writes {"big": float32 zeros of ROWS x 4}; its .metadata is then
rewritten (by unpickling and pickling torch's own Metadata) to say ROWS x COLS, with the
item's storage length grown to match, and the data file is extended to that length without
writing it (a hole). The checkpoint is valid up to the bytes of the record, which nothing may
read: a loader that allocates each rank's rows first fails before it reads anything.
"""
import os
import pickle
import sys

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata


def main():
    out, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    dcp.save({"big": torch.zeros(rows, 4)}, checkpoint_id=out)
    path = os.path.join(out, ".metadata")
    with open(path, "rb") as f:
        md = pickle.load(f)
    item = md.state_dict_metadata["big"]
    item.size = torch.Size([rows, cols])
    item.chunks = [ChunkStorageMetadata(offsets=torch.Size([0, 0]), sizes=torch.Size([rows, cols]))]
    (index, info), = [(k, v) for k, v in md.storage_data.items() if k.fqn == "big"]
    info.length = rows * cols * 4 + 4096  # the record's zip framing and more
    with open(path, "wb") as f:
        pickle.dump(md, f)
    with open(os.path.join(out, info.relative_path), "r+b") as f:
        f.truncate(info.offset + info.length)
    print("ok huge_tensor", rows, cols)


if __name__ == "__main__":
    main()
