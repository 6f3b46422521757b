"""Checks examples/engine's output against a case's expected.json: one line per tensor
(key, dtype, shape, FNV-1a 64 of the bytes, tab-separated) whose hash is that of PyTorch's
bytes in expected/<key>.bin, every tensor present, then the summary line.

    check_engine.py CASE_DIR ENGINE_OUTPUT
"""
import json
import sys


def fnv1a(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    case_dir, output = sys.argv[1], sys.argv[2]
    with open(case_dir + "/expected.json") as f:
        tensors = json.load(f)["tensors"]
    with open(output, encoding="utf-8") as f:
        lines = f.read().splitlines()
    rows = [line.split("\t") for line in lines[:-1]]
    got = {row[0]: row for row in rows}
    failures = []
    if len(got) != len(rows) or set(got) != set(tensors):
        failures.append("keys differ: %s" % sorted(set(got) ^ set(tensors)))
    for key, want in tensors.items():
        if key not in got:
            continue
        _, dtype, _, digest = got[key]
        with open(case_dir + "/" + want["file"], "rb") as f:
            expected = "%016x" % fnv1a(f.read())
        if dtype != want["dtype"] or digest != expected:
            failures.append("%s: %s %s, PyTorch saved %s %s" % (key, dtype, digest, want["dtype"], expected))
    if not lines[-1].startswith("%d tensors" % len(tensors)):
        failures.append("summary: " + lines[-1])
    for failure in failures:
        print("check_engine.py: " + case_dir + ": " + failure)
    print("check_engine.py: %s: %d tensors %s" % (case_dir, len(tensors), "FAIL" if failures else "OK"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
