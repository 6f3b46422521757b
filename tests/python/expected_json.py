"""expected.json for a checkpoint written by make_checkpoint.py: what real PyTorch 1.13 says
the checkpoint holds (its own unpickling of .metadata, the bytes it saved and loads back), in
the schema tests/python/README.md describes; and metadata.json, metadata_json.py's document
(what `dcpp inspect --json` must print)."""

import hashlib
import json
import math
import os

import dcp113
from dcp113 import torch
from dcp113 import BytesStorageMetadata, MetadataIndex, TensorStorageMetadata
from expected_common import CaseError, bin_name, same_object  # noqa: F401  (CaseError re-exported)
from metadata_json import document as metadata_document

FORMAT_FOLLOWED = (
    "real PyTorch 1.13.1 (Debian python3-torch 1.13.1+dfsg, Python 3.11): "
    "torch.distributed._shard.checkpoint.save_state_dict with DefaultSavePlanner and "
    "FileSystemWriter(single_file_per_rank=%s); Metadata without storage_meta/version, "
    "planner_data None (no flattening: path is [key])")


def _bitwise_equal(a, b):
    return (a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)
            and dcp113.tensor_bytes(a) == dcp113.tensor_bytes(b))


def build_expected(case, out, ckpt, reference, world, single_file, description,
                   write_bins=True, verify_load=True):
    metadata = dcp113.read_metadata(ckpt)
    if metadata.planner_data is not None:
        raise CaseError("planner_data is %r, expected None for 1.13" % (metadata.planner_data,))
    keys = list(metadata.state_dict_metadata)
    if set(keys) != set(reference):
        raise CaseError("metadata keys differ from the saved state dict: missing %r, extra %r"
                        % (sorted(set(reference) - set(keys)), sorted(set(keys) - set(reference))))
    loaded = dcp113.load_full(ckpt, metadata) if verify_load else None

    file_sizes = {}

    def storage(fqn, offsets):
        index = MetadataIndex(fqn, offsets) if offsets is not None else MetadataIndex(fqn)
        info = metadata.storage_data[index]
        if info.relative_path not in file_sizes:
            file_sizes[info.relative_path] = os.path.getsize(ckpt / info.relative_path)
        if info.offset < 0 or info.length <= 0 or \
                info.offset + info.length > file_sizes[info.relative_path]:
            raise CaseError("%r: byte range %d+%d outside %s (%d bytes)" % (
                fqn, info.offset, info.length, info.relative_path,
                file_sizes[info.relative_path]))
        return {"file": info.relative_path, "byte_offset": info.offset,
                "byte_length": info.length}

    tensors, objects = {}, {}
    exp_dir = out / "expected"
    if write_bins:
        exp_dir.mkdir(parents=True, exist_ok=True)
    for fqn in keys:
        md = metadata.state_dict_metadata[fqn]
        if isinstance(md, TensorStorageMetadata):
            size = list(md.size)
            dtype = md.properties.dtype
            numel = math.prod(size)
            entry = {
                "path": [fqn],
                "dtype": dcp113.dtype_name(dtype),
                "shape": size,
                "nbytes": numel * torch.empty((), dtype=dtype).element_size(),
                "sha256": None,
                "file": None,
                "requires_grad": bool(md.properties.requires_grad),
                "chunks": [],
            }
            for chunk in md.chunks:
                c = {"offsets": list(chunk.offsets), "sizes": list(chunk.sizes)}
                c.update(storage(fqn, chunk.offsets))
                entry["chunks"].append(c)
            ref = reference[fqn]
            if not isinstance(ref, torch.Tensor):
                raise CaseError("%r is a tensor in .metadata but %s was saved" % (
                    fqn, type(ref).__name__))
            if ref.dtype != dtype or list(ref.shape) != size:
                raise CaseError("%r: metadata says %s %r, saved %s %r" % (
                    fqn, dtype, size, ref.dtype, list(ref.shape)))
            if loaded is not None and not _bitwise_equal(ref, loaded[fqn]):
                raise CaseError("%r: load_state_dict returned different bytes" % fqn)
            if write_bins:
                data = dcp113.tensor_bytes(ref)
                if len(data) != entry["nbytes"]:
                    raise CaseError("%r: %d bytes, expected %d" % (fqn, len(data),
                                                                   entry["nbytes"]))
                entry["sha256"] = hashlib.sha256(data).hexdigest()
                entry["file"] = "expected/" + bin_name(fqn)
                (out / entry["file"]).write_bytes(data)
            tensors[fqn] = entry
        elif isinstance(md, BytesStorageMetadata):
            value = reference[fqn]
            if loaded is not None:
                if not same_object(value, loaded[fqn]):
                    raise CaseError("%r: load_state_dict returned %r, saved %r" % (
                        fqn, loaded[fqn], value))
                value = loaded[fqn]
            st = {"offsets": None}
            st.update(storage(fqn, None))
            objects[fqn] = {"path": [fqn], "py_type": dcp113.py_type(value),
                            "repr": repr(value), "json": dcp113.to_json(value),
                            "storage": [st]}
        else:
            raise CaseError("%r: unknown storage metadata %s" % (fqn, type(md).__name__))

    n_index = sum(len({tuple(c["offsets"]) for c in e["chunks"]}) for e in tensors.values())
    n_index += len(objects)
    if n_index != len(metadata.storage_data):
        raise CaseError("storage_data has %d entries, metadata describes %d items" % (
            len(metadata.storage_data), n_index))

    doc = {
        "schema": 1,
        "case": case,
        "description": description,
        "format_followed": FORMAT_FOLLOWED % single_file,
        "format": "torch-1.13",
        "world_size": world,
        "metadata_version": getattr(metadata, "version", None),
        "checkpoint_id": None,
        "save_id": None,
        "planner_data": None,
        "tensors": tensors,
        "objects": objects,
    }
    (out / "expected.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    (out / "metadata.json").write_text(json.dumps(metadata_document(str(ckpt)), indent=1) + "\n",
                                       encoding="utf-8")
