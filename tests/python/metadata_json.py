#!/usr/bin/env python3
"""The `dcpp inspect --json` document of a checkpoint, computed from PyTorch's own reading of
its `.metadata` (the oracle that dcpp's output is compared with; nothing here uses dcpp).

    /usr/bin/python3 tests/python/metadata_json.py CKPT_DIR...   (torch 1.13 checkpoints)
    .venv/bin/python tests/python/metadata_json.py CKPT_DIR...   (torch 2.x checkpoints)

`.metadata` is unpickled with the stdlib unpickler and torch's real classes, as
FileSystemReader.read_metadata does, so every value below is the attribute torch sees. The
document follows the schema in README.md ("dcpp inspect --json"):
  * format: "torch-1.13" when the Metadata class lives in torch.distributed._shard, else
    "torch-2.x"; version, storage_meta, planner_data: the attributes as pickled (absent = null);
  * items in state_dict_metadata order; tensors with dtype, shape, TensorProperties fields,
    nbytes = numel * element size, layout (`layout()` below, from the chunk list alone), and
    per chunk the _StorageInfo that storage_data maps MetadataIndex(fqn, chunk.offsets) to;
    objects with the _StorageInfo of MetadataIndex(fqn);
  * extra_attributes: attributes of the pickled Metadata state other than the known ones.
Prints one JSON document per line, one line per CKPT_DIR in order; exit 1 with a message
on stderr on failure. make_checkpoint.py and make_checkpoint2x.py store the same document as
DIR/metadata.json beside each case (`document()` below).
"""

import json
import math
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import warnings  # noqa: E402

warnings.filterwarnings("ignore")  # ComplexHalf and TypedStorage notices

if torch.__version__.startswith("1."):
    import dcp113  # noqa: E402,F401  (Python 3.11 dataclasses fix before torch DCP imports)
    from torch.distributed._shard.checkpoint.metadata import (  # noqa: E402
        BytesStorageMetadata, MetadataIndex, TensorStorageMetadata)
else:
    from torch.distributed.checkpoint.metadata import (  # noqa: E402
        BytesStorageMetadata, MetadataIndex, TensorStorageMetadata)

KNOWN = ("state_dict_metadata", "planner_data", "storage_data", "storage_meta", "version")


def storage(md, fqn, offsets):
    index = MetadataIndex(fqn, offsets) if offsets is not None else MetadataIndex(fqn)
    info = md.storage_data.get(index)
    if info is None:
        return {"file": None, "offset": None, "length": None}
    out = {"file": info.relative_path, "offset": info.offset, "length": info.length}
    descriptors = vars(info).get("transform_descriptors")
    if descriptors:
        out["transform_descriptors"] = list(descriptors)
    return out


def chunk_parts(n, parts):
    """(start, size) of the pieces torch.chunk itself cuts n elements into (it drops empty
    trailing pieces): an (n, 0) tensor, so no memory however large n is."""
    out, start = [], 0
    for piece in torch.empty((n, 0)).chunk(parts, 0):
        out.append((start, piece.size(0)))
        start += piece.size(0)
    return out


def layout(size, chunks):
    """The "layout" object of a tensor saved as `chunks` (README.md's schema), by brute force
    over torch.chunk splits, independently of dcpp's algorithm: judged on the non-empty chunks;
    "whole" for one chunk of everything (and tensors with no element); "rows"/"cols"/"dim" when
    the chunks are torch.chunk(tensor, k, d) for k = their count; "nested" when they are
    torch.chunk(., A, d) and each piece torch.chunk(., B, d) (largest A, then smallest B);
    "grid" when the chunks are every pair of torch.chunk pieces along two dims; else
    "irregular" with the number of non-empty chunks."""
    size = list(size)
    boxes = [(list(c.offsets), list(c.sizes)) for c in chunks if all(s > 0 for s in c.sizes)]
    if any(s == 0 for s in size):
        return {"kind": "whole"}
    irregular = {"kind": "irregular", "chunks": len(boxes)}
    split = sorted({d for _, s in boxes for d in range(len(size)) if s[d] != size[d]})
    if not split:
        return {"kind": "whole"} if len(boxes) == 1 else irregular

    def along(d, unique):
        ext = [(o[d], s[d]) for o, s in boxes]
        return sorted(set(ext)) if unique else sorted(ext)

    if len(split) == 1:
        d, n = split[0], size[split[0]]
        ext = along(d, False)
        if ext == chunk_parts(n, len(ext)):
            return {"kind": ["rows", "cols"][d] if d < 2 else "dim", "dim": d, "parts": len(ext)}
        for a in range(len(ext), 1, -1):
            outer = chunk_parts(n, a)
            if len(outer) != a:
                continue
            for b in range(1, outer[0][1] + 1):
                if [(o + i, s) for o, m in outer for i, s in chunk_parts(m, b)] == ext:
                    return {"kind": "nested", "dim": d, "parts": [a, b]}
        return irregular
    if len(split) == 2:
        e0, e1 = along(split[0], True), along(split[1], True)
        if e0 != chunk_parts(size[split[0]], len(e0)) or e1 != chunk_parts(size[split[1]], len(e1)):
            return irregular
        cells = sorted((o[split[0]], o[split[1]]) for o, _ in boxes)
        if cells != sorted((x, y) for x, _ in e0 for y, _ in e1):
            return irregular
        return {"kind": "grid", "dims": split, "parts": [len(e0), len(e1)]}
    return irregular


def document(ckpt):
    with open(os.path.join(ckpt, ".metadata"), "rb") as f:
        md = pickle.load(f)
    state = vars(md)
    module = type(md).__module__
    doc = {"format": "torch-1.13" if module.startswith("torch.distributed._shard.")
           else "torch-2.x",
           "source": "dcp",  # a directory with .metadata: what dcpp says it read
           "version": state.get("version")}
    sm = state.get("storage_meta")
    if sm is None:
        doc["storage_meta"] = None
    else:
        s = vars(sm)
        cid = s.get("checkpoint_id")
        doc["storage_meta"] = {"checkpoint_id": os.fspath(cid) if cid is not None else None,
                               "save_id": s.get("save_id"), "load_id": s.get("load_id"),
                               "modules": list(s.get("modules") or [])}
    items = []
    for fqn, item in md.state_dict_metadata.items():
        if isinstance(item, TensorStorageMetadata):
            p = item.properties
            dtype = p.dtype
            entry = {"fqn": fqn, "kind": "tensor", "dtype": str(dtype).replace("torch.", ""),
                     "shape": list(item.size), "requires_grad": bool(p.requires_grad),
                     "memory_format": str(p.memory_format).replace("torch.", ""),
                     "pin_memory": bool(p.pin_memory),
                     "nbytes": math.prod(item.size) * torch.empty((), dtype=dtype).element_size(),
                     "layout": layout(item.size, item.chunks),
                     "chunks": []}
            for c in item.chunks:
                chunk = {"offsets": list(c.offsets), "sizes": list(c.sizes)}
                chunk.update(storage(md, fqn, c.offsets))
                entry["chunks"].append(chunk)
        elif isinstance(item, BytesStorageMetadata):
            entry = {"fqn": fqn, "kind": "bytes"}
            entry.update(storage(md, fqn, None))
        else:
            raise TypeError("%r: unknown storage metadata %s" % (fqn, type(item).__name__))
        items.append(entry)
    doc["items"] = items
    pd = state.get("planner_data")
    doc["planner_data"] = None if pd is None else {k: list(v) for k, v in pd.items()}
    doc["extra_attributes"] = [k for k in state if k not in KNOWN]
    return doc


def main():
    if len(sys.argv) < 2:
        print("usage: metadata_json.py CKPT_DIR...", file=sys.stderr)
        return 2
    for ckpt in sys.argv[1:]:
        try:
            doc = document(ckpt)
        except Exception as e:  # noqa: BLE001
            print("metadata_json.py: %s: %s: %s" % (ckpt, type(e).__name__, e), file=sys.stderr)
            return 1
        sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
