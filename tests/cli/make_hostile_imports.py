"""Small files that describe huge checkpoints, for `dcpp convert FILE CKPT_DIR`'s budgets
(tests/cli/test_cli_imports.cpp). The .pt files are written by real torch (torch.save keeps a
view's storage, offset and strides, and shares a value the pickle memo shares); the
safetensors file's header is written directly, as the library writes it, with more entries
than building them in torch would take time for.

  make_hostile_imports.py DIR KIND...   writes DIR/KIND.pt (or .safetensors) for each KIND:
    stride0        {'w': 2^40 float32 elements, a stride-0 view of one 4-byte storage}
                   (1.5 KB describing 4 TiB)
    broadcast      {'t0'..'t99': views expanding one element to 2^25 (128 MiB each, 12.8 GiB)}
    shared_str     {'k0'..'k999': one 10 MB string, shared by memo (10 GB written)}
    objects        {'k0'..'k999999': the ints 0..999999}
    empty_tensors  (.safetensors) 1,670,000 empty float32 tensors, 99 MB of header
    big_pt, big_safetensors   one float32 tensor of 256 MiB (the safetensors one sparse)
"""
import json
import struct
import sys


def write(kind, base):
    if kind == "empty_tensors":
        entry = '{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
        header = ("{" + ",".join(f'"k{i}":{entry}' for i in range(1_670_000)) + "}").encode()
        with open(base + ".safetensors", "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
        return
    numel = 256 << 18
    if kind == "big_safetensors":
        header = json.dumps({"w": {"dtype": "F32", "shape": [numel], "data_offsets": [0, 4 * numel]}}).encode()
        with open(base + ".safetensors", "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            f.truncate(8 + len(header) + 4 * numel)  # zeros, without writing them
        return
    import torch

    if kind == "stride0":
        value = {"w": torch.zeros(1).expand(2**40)}
    elif kind == "broadcast":
        one = torch.ones(1)
        value = {f"t{i}": one.expand(2**25) for i in range(100)}
    elif kind == "shared_str":
        text = "x" * 10_000_000
        value = {f"k{i}": text for i in range(1000)}
    elif kind == "objects":
        value = {f"k{i}": i for i in range(1_000_000)}
    elif kind == "big_pt":
        value = {"w": torch.arange(numel, dtype=torch.float32)}
    else:
        sys.exit(f"make_hostile_imports.py: unknown kind {kind}")
    torch.save(value, base + ".pt")


def main():
    for kind in sys.argv[2:]:
        write(kind, sys.argv[1] + "/" + kind)


if __name__ == "__main__":
    main()
