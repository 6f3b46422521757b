"""Uses an installed libdcp through ctypes alone (no build step), against torch 2.13 as the oracle.

usage: ctypes_consumer.py LIBDCP CKPT WORKDIR

CKPT is a checkpoint torch 2.13's dcp.save wrote (tests/capi/run_capi.py). Every tensor is read
through the C API whole, as boxes with caller strides and converted dtypes, and as rank shares
(dcp_load), and compared with what torch's own dcp.load gives; objects come back as JSON equal
to the saved values; every error path returns its status; dcp_save writes a checkpoint that
torch's dcp.load reads back exactly.
"""
import ctypes as C
import json
import os
import sys

import numpy as np
import torch
import torch.distributed.checkpoint as dcp

lib_path, ckpt, work = sys.argv[1:4]
lib = C.CDLL(lib_path)

I64P = C.POINTER(C.c_int64)


class Entry(C.Structure):
    _fields_ = [("key", C.c_char_p), ("key_size", C.c_size_t), ("kind", C.c_int), ("dtype", C.c_int),
                ("ndim", C.c_size_t), ("shape", I64P), ("bytes", C.c_uint64)]


class Box(C.Structure):
    _fields_ = [("ndim", C.c_size_t), ("offsets", I64P), ("lengths", I64P), ("strides", I64P),
                ("dtype", C.c_int), ("data", C.c_void_p), ("capacity", C.c_uint64)]


class LoadItem(C.Structure):
    _fields_ = [("key", C.c_char_p), ("key_size", C.c_size_t), ("dtype", C.c_int), ("data", C.c_void_p),
                ("capacity", C.c_uint64)]


class SaveItem(C.Structure):
    _fields_ = [("key", C.c_char_p), ("key_size", C.c_size_t), ("dtype", C.c_int), ("ndim", C.c_size_t),
                ("shape", I64P), ("strides", I64P), ("data", C.c_void_p), ("capacity", C.c_uint64)]


class SaveOptions(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("overwrite", C.c_int), ("torch_1_13", C.c_int), ("no_sync", C.c_int)]


H = C.c_void_p
lib.dcp_version.restype = C.c_char_p
lib.dcp_status_name.restype = C.c_char_p
lib.dcp_dtype_name.restype = C.c_char_p
lib.dcp_last_error.restype = C.c_char_p
lib.dcp_last_error.argtypes = [H]
lib.dcp_open.argtypes = [C.c_char_p, C.c_void_p, C.POINTER(H)]
lib.dcp_close.argtypes = [H]
lib.dcp_entry_count.argtypes = [H, C.POINTER(C.c_size_t)]
lib.dcp_entry_at.argtypes = [H, C.c_size_t, C.POINTER(Entry)]
lib.dcp_find.argtypes = [H, C.c_char_p, C.c_size_t, C.POINTER(C.c_size_t)]
lib.dcp_read_tensor.argtypes = [H, C.c_char_p, C.c_size_t, C.POINTER(Box)]
lib.dcp_load.argtypes = [H, C.POINTER(LoadItem), C.c_size_t, C.c_int, C.c_int]
lib.dcp_read_object_json.argtypes = [H, C.c_char_p, C.c_size_t, C.POINTER(C.c_void_p), C.POINTER(C.c_size_t)]
lib.dcp_free.argtypes = [C.c_void_p]
lib.dcp_save.argtypes = [C.c_char_p, C.POINTER(SaveItem), C.c_size_t, C.POINTER(SaveOptions)]

STATUS = {name: i for i, name in enumerate(
    ["ok", "invalid_argument", "not_found", "data_loss", "out_of_range", "failed_precondition", "unimplemented",
     "io", "cancelled", "permission_denied", "internal", "resource_exhausted"])}
STATUS["bad_handle"] = 100
for name, value in STATUS.items():
    assert lib.dcp_status_name(value).decode() == name, name

# dcp_dtype by torch's name, from the library's own table (no copy of it here).
DTYPES = {}
for code in range(64):
    name = lib.dcp_dtype_name(code)
    if name is not None:
        DTYPES[name.decode()] = code
TORCH_DTYPE = {code: getattr(torch, name) for name, code in DTYPES.items() if hasattr(torch, name)}


def code_of(dtype):
    return DTYPES[str(dtype).removeprefix("torch.")]


def expect(status, name, handle=None):
    message = lib.dcp_last_error(handle).decode()
    assert status == STATUS[name], f"expected {name}, got {lib.dcp_status_name(status).decode()}: {message}"
    assert (message == "") == (name == "ok"), f"{name} with message {message!r}"
    return message


def i64(values):
    return (C.c_int64 * max(len(values), 1))(*values)


def read_box(h, key, dtype, shape, offsets=None, lengths=None, strides=None, capacity=None):
    """Reads a box into a fresh buffer as a torch tensor of `lengths` with `strides`."""
    lengths = list(shape) if lengths is None else lengths
    strides = torch.empty(lengths).stride() if strides is None else strides
    extent = 1 + sum((n - 1) * s for n, s in zip(lengths, strides)) if all(lengths) else 0
    out = torch.zeros(max(extent, 1), dtype=dtype)
    box = Box(len(shape), i64(offsets) if offsets is not None else None, i64(lengths), i64(strides), code_of(dtype),
              out.data_ptr(), out.element_size() * extent if capacity is None else capacity)
    status = lib.dcp_read_tensor(h, key, len(key), C.byref(box))
    return status, out[:extent].as_strided(lengths, strides) if extent else out[:0].reshape(lengths)


# ---- torch's own load of the same checkpoint: the oracle.
meta = dcp.FileSystemReader(ckpt).read_metadata()
expected = {}
for fqn, item in meta.state_dict_metadata.items():
    if hasattr(item, "size"):
        expected[fqn] = torch.empty(item.size, dtype=item.properties.dtype)
    else:
        expected[fqn] = None
objects = {k for k, v in expected.items() if v is None}
dcp.load(expected, checkpoint_id=ckpt)

h = H()
assert lib.dcp_version().decode() == "0.1.0"
expect(lib.dcp_open(ckpt.encode(), None, C.byref(h)), "ok")
count = C.c_size_t()
expect(lib.dcp_entry_count(h, C.byref(count)), "ok", h)
assert count.value == len(expected), (count.value, len(expected))
tensors = 0
for i in range(count.value):
    e = Entry()
    expect(lib.dcp_entry_at(h, i, C.byref(e)), "ok", h)
    key = C.string_at(e.key, e.key_size)
    fqn = key.decode()
    index = C.c_size_t()
    expect(lib.dcp_find(h, key, len(key), C.byref(index)), "ok", h)
    assert index.value == i
    if fqn in objects:
        assert e.kind == 1
        text, size = C.c_void_p(), C.c_size_t()
        expect(lib.dcp_read_object_json(h, key, len(key), C.byref(text), C.byref(size)), "ok", h)
        value = json.loads(C.string_at(text, size.value).decode())
        lib.dcp_free(text)
        assert value == json.loads(json.dumps(expected[fqn])), (fqn, value, expected[fqn])
        continue
    t = expected[fqn]
    shape = [e.shape[d] for d in range(e.ndim)]
    assert e.kind == 0 and TORCH_DTYPE[e.dtype] == t.dtype and shape == list(t.shape), fqn
    assert e.bytes == t.numel() * t.element_size()
    status, got = read_box(h, key, t.dtype, shape)
    expect(status, "ok", h)
    assert torch.equal(got.view(torch.uint8) if t.dtype == torch.bool else got,
                       t.view(torch.uint8) if t.dtype == torch.bool else t), fqn
    tensors += 1
    if t.dim() >= 1 and t.shape[0] >= 2 and t.dtype.is_floating_point:
        # A box of rows [1, n) (and columns [1, m) in 2-d), column-major, converted to float64.
        offsets = [1] + [min(1, n - 1) for n in shape[1:]]
        lengths = [n - o for n, o in zip(shape, offsets)]
        strides = torch.empty(list(reversed(lengths))).stride()[::-1]
        status, got = read_box(h, key, torch.float64, shape, offsets, lengths, list(strides))
        expect(status, "ok", h)
        want = t[tuple(slice(o, o + n) for o, n in zip(offsets, lengths))].to(torch.float64)
        assert torch.equal(got, want), fqn
    if t.dim() >= 1:
        # Each rank's rows as torch.chunk gives them, in one planned load of every tensor.
        world = 3
        for rank in range(world):
            parts = torch.chunk(t, world)
            want = parts[rank] if rank < len(parts) else t[:0]
            out = torch.zeros(max(want.numel(), 1), dtype=t.dtype)
            item = LoadItem(key, len(key), code_of(t.dtype), out.data_ptr(), want.numel() * t.element_size())
            expect(lib.dcp_load(h, C.byref(item), 1, rank, world), "ok", h)
            assert torch.equal(out[:want.numel()].view(want.shape), want), (fqn, rank)

# ---- every error path returns its status.
big = next(k for k, v in expected.items() if v is not None and v.dim() == 2)
t = expected[big]
kb = big.encode()
expect(lib.dcp_read_tensor(h, b"no.such.key", 11, C.byref(Box())), "not_found", h)
assert "no.such.key" in lib.dcp_last_error(h).decode()
expect(lib.dcp_read_tensor(h, None, 0, C.byref(Box())), "invalid_argument", h)
obj = next(iter(objects)).encode()
expect(read_box(h, obj, torch.float32, [])[0], "failed_precondition", h)
status, _ = read_box(h, kb, t.dtype, list(t.shape), offsets=[1, 0], lengths=list(t.shape))
expect(status, "out_of_range", h)  # the box runs one row past the end
status, _ = read_box(h, kb, t.dtype, list(t.shape), capacity=t.numel() * t.element_size() - 1)
expect(status, "out_of_range", h)  # the buffer is a byte short
status, _ = read_box(h, kb, t.dtype, [t.shape[0]])
expect(status, "invalid_argument", h)  # a 1-d box of a 2-d tensor
status, _ = read_box(h, kb, t.dtype, list(t.shape), strides=[1, 1])
expect(status, "invalid_argument", h)  # rows overlap: [0, 1] and [1, 0] are one element
box = Box(2, None, None, None, 999, None, 0)
expect(lib.dcp_read_tensor(h, kb, len(kb), C.byref(box)), "invalid_argument", h)  # no such dtype
box = Box(2, None, None, None, DTYPES["complex64"], None, 1 << 20)
expect(lib.dcp_read_tensor(h, kb, len(kb), C.byref(box)), "failed_precondition", h)  # no conversion
expect(lib.dcp_read_tensor(h, kb, len(kb), None), "invalid_argument", h)
item = LoadItem(kb, len(kb), code_of(t.dtype), None, 0)
expect(lib.dcp_load(h, C.byref(item), 1, 3, 3), "invalid_argument", h)  # rank past the world
expect(lib.dcp_load(h, C.byref(item), 1, 0, 1), "invalid_argument", h)  # data NULL
out = torch.zeros(t.numel(), dtype=t.dtype)
item = LoadItem(kb, len(kb), code_of(t.dtype), out.data_ptr(), 8)
expect(lib.dcp_load(h, C.byref(item), 1, 0, 1), "out_of_range", h)  # the share does not fit
items = (LoadItem * 2)(LoadItem(kb, len(kb), code_of(t.dtype), out.data_ptr(), out.numel() * out.element_size()),
                       LoadItem(kb, len(kb), code_of(t.dtype), out.data_ptr(), out.numel() * out.element_size()))
expect(lib.dcp_load(h, items, 2, 0, 1), "invalid_argument", h)  # a key twice
text, size = C.c_void_p(), C.c_size_t()
expect(lib.dcp_read_object_json(h, kb, len(kb), C.byref(text), C.byref(size)), "failed_precondition", h)
assert text.value is None
expect(lib.dcp_entry_at(h, count.value, C.byref(Entry())), "out_of_range", h)
expect(lib.dcp_entry_count(h, None), "invalid_argument", h)
# Messages are per thread: another thread's call leaves this thread's message alone.
import threading
expect(lib.dcp_find(h, b"x", 1, C.byref(C.c_size_t())), "not_found", h)
threading.Thread(target=lambda: lib.dcp_entry_count(h, None)).start()
assert "'x'" in lib.dcp_last_error(h).decode()
# Calls on one handle from several threads at once (ctypes lets go of the GIL during a call).
failures = []


def reader():
    for _ in range(5):
        for fqn, t in expected.items():
            if t is None:
                continue
            status, got = read_box(h, fqn.encode(), t.dtype, list(t.shape))
            if status != 0 or not torch.equal(got, t):
                failures.append((fqn, status))


threads = [threading.Thread(target=reader) for _ in range(4)]
for th in threads:
    th.start()
for th in threads:
    th.join()
assert not failures, failures
bogus = H(C.addressof(C.c_int64(0)))
expect(lib.dcp_entry_count(bogus, C.byref(count)), "bad_handle")
expect(lib.dcp_entry_count(None, C.byref(count)), "bad_handle")
expect(lib.dcp_close(h), "ok")
expect(lib.dcp_entry_count(h, C.byref(count)), "bad_handle")  # closed
expect(lib.dcp_close(h), "bad_handle")
h2 = H(1)
expect(lib.dcp_open(os.path.join(work, "missing").encode(), None, C.byref(h2)), "not_found")
assert h2.value is None
expect(lib.dcp_open(None, None, C.byref(h2)), "invalid_argument")

# ---- dcp_save: numpy memory, one tensor strided, read back by torch's dcp.load.
rng = np.random.default_rng(7)
arrays = {"w": rng.standard_normal((5, 3)).astype(np.float32), "b": np.arange(4, dtype=np.int64),
          "t": np.asfortranarray(rng.standard_normal((3, 4))), "s": np.array(2.5, dtype=np.float16)}
items = (SaveItem * len(arrays))()
keep = []
for i, (k, a) in enumerate(arrays.items()):
    shape, strides = i64(a.shape), i64([s // a.itemsize for s in a.strides])
    keep += [shape, strides]
    items[i] = SaveItem(k.encode(), len(k), DTYPES[str(torch.from_numpy(a.copy()).dtype).removeprefix("torch.")],
                        a.ndim, shape, strides, a.ctypes.data, a.nbytes)
saved = os.path.join(work, "saved")
options = SaveOptions(C.sizeof(SaveOptions), 0, 0, 1)
expect(lib.dcp_save(saved.encode(), items, len(arrays), C.byref(options)), "ok")
back = {k: torch.empty(a.shape, dtype=torch.from_numpy(a.copy()).dtype) for k, a in arrays.items()}
dcp.load(back, checkpoint_id=saved)
for k, a in arrays.items():
    assert torch.equal(back[k], torch.from_numpy(np.array(a, order="C"))), k
expect(lib.dcp_save(saved.encode(), items, len(arrays), C.byref(options)), "failed_precondition")  # no overwrite
items[0].capacity -= 1
options.overwrite = 1
expect(lib.dcp_save(saved.encode(), items, 1, C.byref(options)), "out_of_range")
expect(lib.dcp_save(None, items, 1, None), "invalid_argument")
print(f"ok: {tensors} tensors and {len(objects)} objects through ctypes")
