"""Keys that a terminal would act on, for tests/cli/test_cli_output.cpp, and the oracles that
judge what dcpp prints for them. Run with torch 2.13 (.venv/bin/python: torch, safetensors).

  control_keys.py make DIR            DIR/ckpt (dcp.save), DIR/keys.pt (torch.save) and
                                      DIR/keys.safetensors (the safetensors library) of tensors
                                      under KEYS, an object under OBJECT_KEY (not in the
                                      safetensors file), DIR/deep.pt (an object nested deeper
                                      than dcpp's encoder goes, under DEEP_KEY) and DIR/shown.json:
                                      each key of the checkpoint as the documented escaping
                                      spells it (shown(), below: Python's strict UTF-8 decoder
                                      decides what is valid), and where deep.pt's data.pkl lies
  control_keys.py damage CKPT         flips the first byte of every tensor's data (torch's own
                                      reading of .metadata says where the records are)
  control_keys.py json-keys JSON CKPT the "fqn"s of dcpp's inspect --json document (JSON) are
                                      exactly the keys of torch's own reading of CKPT
  control_keys.py text FILE [LINES]   FILE is strict UTF-8 with no C0 (but the newline ending
                                      each line), DEL or C1 character; LINES: that many lines
  control_keys.py table FILE          FILE is a `dcpp inspect` table whose KIND column starts at
                                      the same character on every row
  control_keys.py safetensors PT OUT  OUT (read by the safetensors library) holds exactly the
                                      tensors of PT (torch.load) whose keys are Unicode text

Prints "control_keys: OK: ..." or "control_keys: FAIL: ..." (exit 1).
"""
import io
import json
import os
import sys
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from terminal_text import shown  # noqa: E402

# Tensor keys: ESC sequences (CSI colour, OSC window title), newline, CR, tab, DEL, C1 CSI and
# NEL, lone surrogates (Python's pickle writes them with "surrogatepass": not UTF-8), valid
# UTF-8 that must stay as it is, a backslash.
KEYS = ["esc\x1b[31mred\x1b[0m", "title\x1b]0;pwned\x07", "new\nline", "cr\rkey", "tab\tkey", "del\x7fkey",
        "c1\x9b2Jcsi", "nel\x85key", "low\udcffsurrogate", "high\ud83d", "\u00fcn\u00efc\u00f6d\u00e9 \u2713 \u4e2d\u6587",
        "back\\slash", "plain"]
OBJECT_KEY = "obj\x1b]0;x\x07"
DEEP_KEY = "deep\x1b[2J\nkey"
DEEP_LEVELS = 300  # tuples in tuples: Python pickles them without a MARK, dcpp's encoder stops at 256


def fail(message):
    print("control_keys: FAIL: " + message)
    sys.exit(1)


def ok(message):
    print("control_keys: OK: " + message)


def key_bytes(key):
    return key.encode("utf-8", "surrogatepass")  # as pickle stores a str


def state_dict():
    import torch
    sd = {k: torch.arange(6, dtype=torch.float32).reshape(2, 3) + i for i, k in enumerate(KEYS)}
    sd[OBJECT_KEY] = {"a": 1}
    return sd


def make(out):
    import torch
    import torch.distributed.checkpoint as dcp
    import safetensors.torch
    sd = state_dict()
    dcp.save(sd, checkpoint_id=out + "/ckpt", no_dist=True)
    torch.save(sd, out + "/keys.pt")
    safetensors.torch.save_file({k: v for k, v in sd.items() if k in KEYS and is_text(k)}, out + "/keys.safetensors")
    deep = 1
    for _ in range(DEEP_LEVELS):
        deep = (deep,)
    torch.save({"w": torch.ones(3), DEEP_KEY: deep}, out + "/deep.pt")
    with open(out + "/deep.pt", "rb") as f:
        archive = f.read()
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
    pkl_start = data_start(archive, info)
    flat = list(KEYS) + [OBJECT_KEY + ".a"]  # dcp.save flattens the object's dict
    with open(out + "/shown.json", "w", encoding="utf-8") as f:
        json.dump({"keys": [shown(key_bytes(k)) for k in flat], "tensors": len(KEYS),
                   "deep_key": shown(key_bytes(DEEP_KEY)), "deep_pkl": [pkl_start, pkl_start + info.file_size]}, f)
    ok("made " + out)


def data_start(archive, entry):
    """Where an entry's bytes begin: after its local header, name and extra field."""
    name_len = int.from_bytes(archive[entry.header_offset + 26:entry.header_offset + 28], "little")
    extra_len = int.from_bytes(archive[entry.header_offset + 28:entry.header_offset + 30], "little")
    return entry.header_offset + 30 + name_len + extra_len


def is_text(key):
    try:
        key.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def torch_keys(ckpt):
    import torch.distributed.checkpoint as dcp
    return dcp.FileSystemReader(ckpt).read_metadata()


def damage(ckpt):
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    md = torch_keys(ckpt)
    tensors = {index: info for index, info in md.storage_data.items()
               if isinstance(md.state_dict_metadata[index.fqn], TensorStorageMetadata)}
    for index, info in tensors.items():
        with open(ckpt + "/" + info.relative_path, "r+b") as f:
            f.seek(info.offset)
            record = f.read(info.length)
            with zipfile.ZipFile(io.BytesIO(record)) as z:
                entry = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
            at = info.offset + data_start(record, entry)  # the tensor's first byte: its CRC-32 fails
            f.seek(at)
            f.write(bytes([record[at - info.offset] ^ 0x10]))
    ok(f"damaged {len(tensors)} tensor records")


def json_keys(doc_path, ckpt):
    with open(doc_path, encoding="utf-8") as f:  # strict: dcpp's JSON must be UTF-8
        doc = json.load(f)
    ours = [item["fqn"] for item in doc["items"]]
    theirs = list(torch_keys(ckpt).state_dict_metadata)
    if sorted(ours) != sorted(theirs) or len(ours) != len(theirs):
        fail(f"dcpp {ours!r} vs torch {theirs!r}")
    ok(f"{len(ours)} keys as torch reads them")


def text(path, lines=None):
    with open(path, "rb") as f:
        raw = f.read()
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(f"{path}: not UTF-8: {e}")
    if decoded and not decoded.endswith("\n"):
        fail(f"{path}: last line has no newline: {decoded!r}")
    rows = decoded.split("\n")[:-1]
    for row in rows:
        bad = [c for c in row if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F]
        if bad:
            fail(f"{path}: control characters {bad!r} in {row!r}")
    if lines is not None and len(rows) != lines:
        fail(f"{path}: {len(rows)} lines, expected {lines}: {decoded!r}")
    ok(f"{path}: {len(rows)} lines a terminal shows as they are")


def table(path):
    with open(path, encoding="utf-8") as f:
        rows = f.read().split("\n")
    column = rows[0].index("KIND")
    body = [r for r in rows[1:] if " tensor " in r or " bytes " in r]
    if not body:
        fail(f"{path}: no rows")
    for row in body:
        if row[column:column + 6] not in ("tensor", "bytes "):
            fail(f"{path}: KIND does not start at character {column}: {row!r}")
    ok(f"{path}: {len(body)} rows aligned")


def safetensors_keys(pt, out):
    import torch
    import safetensors.torch
    orig = {k: v for k, v in torch.load(pt, weights_only=False).items() if isinstance(v, torch.Tensor) and is_text(k)}
    got = safetensors.torch.load_file(out)
    if sorted(got) != sorted(orig):
        fail(f"keys {sorted(got)!r} vs {sorted(orig)!r}")
    for k, v in orig.items():
        if got[k].dtype != v.dtype or not torch.equal(got[k], v):
            fail(f"{k!r}: {got[k]} vs {v}")
    ok(f"{out}: {len(got)} tensors as {pt} holds them")


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "make":
        make(*args)
    elif mode == "damage":
        damage(*args)
    elif mode == "json-keys":
        json_keys(*args)
    elif mode == "text":
        text(args[0], int(args[1]) if len(args) > 1 else None)
    elif mode == "table":
        table(*args)
    elif mode == "safetensors":
        safetensors_keys(*args)
    else:
        fail("unknown mode " + mode)


if __name__ == "__main__":
    main()
