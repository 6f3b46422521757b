"""Shared helpers for the PyTorch 1.13 interop scripts (run them with /usr/bin/python3).

Importing this module makes Debian's python3-torch 1.13 usable on Python 3.11: torch 1.13's
``ShardedTensorMetadata`` declares ``tensor_properties = field(default=TensorProperties())``,
which Python 3.11's dataclasses reject ("mutable default ... use default_factory") because
TensorProperties is an unhashable dataclass instance. The patch below turns exactly that kind
of default (an instance of an unhashable dataclass) into a ``default_factory`` that returns a
deep copy, which is what Python <= 3.10 effectively allowed. It must run before the first
``import torch.distributed._shard``; ``import dcp113`` does it.

Exports ``dcp`` (torch.distributed._shard.checkpoint) and helpers that turn tensors into the
raw byte layout used by expected.json / expected/<key>.bin.
"""

import copy
import dataclasses
import sys
import warnings

_orig_get_field = dataclasses._get_field


def _is_unhashable_dataclass_instance(value):
    return (dataclasses.is_dataclass(value) and not isinstance(value, type)
            and type(value).__hash__ is None)


def _patched_get_field(cls, a_name, a_type, *args, **kwargs):
    default = cls.__dict__.get(a_name, dataclasses.MISSING)
    if isinstance(default, dataclasses.Field):
        if _is_unhashable_dataclass_instance(default.default):
            value = default.default
            default.default = dataclasses.MISSING
            default.default_factory = lambda v=value: copy.deepcopy(v)
    elif _is_unhashable_dataclass_instance(default):
        setattr(cls, a_name, dataclasses.field(
            default_factory=lambda v=default: copy.deepcopy(v)))
    return _orig_get_field(cls, a_name, a_type, *args, **kwargs)


if sys.version_info >= (3, 11):
    dataclasses._get_field = _patched_get_field

# torch 1.13 prints a few deprecation warnings (TypedStorage, ShardedTensor); keep scripts quiet.
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from expected_common import py_type, to_json  # noqa: E402,F401  (re-exported)
import torch.distributed as dist  # noqa: E402
import torch.distributed._shard.checkpoint as dcp  # noqa: E402
from torch.distributed._shard.checkpoint.metadata import (  # noqa: E402
    BytesStorageMetadata, Metadata, MetadataIndex, TensorStorageMetadata)

if sys.byteorder != "little":
    raise SystemExit("these scripts assume a little-endian host")

DTYPE_NAMES = {
    torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
    torch.bfloat16: "bfloat16", torch.int8: "int8", torch.uint8: "uint8",
    torch.int16: "int16", torch.int32: "int32", torch.int64: "int64", torch.bool: "bool",
    torch.complex64: "complex64", torch.complex128: "complex128",
}


def dtype_name(dtype):
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        return str(dtype).replace("torch.", "")


def tensor_bytes(t):
    """Row-major little-endian bytes of a tensor (bf16 as raw 16-bit patterns, bool 0/1,
    complex interleaved (re, im))."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def read_metadata(ckpt_dir):
    """Metadata exactly as torch 1.13 reads it (plain pickle.load via FileSystemReader)."""
    return dcp.FileSystemReader(str(ckpt_dir)).read_metadata()


def load_full(ckpt_dir, metadata=None, reader=None):
    """Load every item of a checkpoint with torch 1.13's load_state_dict into full-shape,
    single-process destinations. Returns {fqn: tensor | object} in metadata order. `reader`
    defaults to a FileSystemReader of `ckpt_dir` (load_check passes one that maps 2.x classes)."""
    if reader is None:
        reader = dcp.FileSystemReader(str(ckpt_dir))
    if metadata is None:
        metadata = reader.read_metadata()
    sd = {}
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, TensorStorageMetadata):
            sd[fqn] = torch.zeros(md.size, dtype=md.properties.dtype)
        elif isinstance(md, BytesStorageMetadata):
            sd[fqn] = None
        else:
            raise TypeError("unknown storage metadata %r for %r" % (type(md), fqn))
    dcp.load_state_dict(sd, reader, no_dist=True)
    return sd
