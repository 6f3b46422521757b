#!/usr/bin/python3
"""Make damaged copies of checkpoint files for negative tests (no torch needed).

CLI:
    damage.py copy SRC_DIR DST_DIR          copy a checkpoint directory (DST_DIR replaced)
    damage.py truncate FILE K               cut FILE to its first K bytes (K < 0: drop -K bytes)
    damage.py flip FILE K [--mask M]        XOR the byte at offset K (K < 0: from the end)
                                            with M (default 0xff)
    damage.py malicious OUTFILE MARKERPATH [--form global|stack_global|both]
                                            write a pickle that, under pickle.load, runs
                                            os.system("touch MARKERPATH"); default form
                                            `global`: PROTO 2, GLOBAL 'posix system';
                                            `stack_global`: PROTO 4, STACK_GLOBAL 'os' 'system'.
                                            `both` writes OUTFILE (global) and
                                            OUTFILE.stack_global.

Files are modified in place (run `copy` first). Exit 0 on success, 1 with a message otherwise.
Also importable: copy_checkpoint, truncate_file, flip_byte, malicious_pickle,
write_malicious.
"""

import argparse
import os
import shlex
import shutil
import struct
import sys


def copy_checkpoint(src, dst):
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    for root, dirs, files in os.walk(dst):  # sources may be read-only fixtures
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
    os.chmod(dst, 0o755)


def truncate_file(path, k):
    size = os.path.getsize(path)
    new = size + k if k < 0 else k
    if not 0 <= new <= size:
        raise ValueError("cannot truncate %s (%d bytes) to %d bytes" % (path, size, new))
    os.truncate(path, new)
    return new


def flip_byte(path, k, mask=0xFF):
    size = os.path.getsize(path)
    pos = size + k if k < 0 else k
    if not 0 <= pos < size:
        raise ValueError("offset %d outside %s (%d bytes)" % (k, path, size))
    if not 0 < mask <= 0xFF:
        raise ValueError("mask must be 1..255")
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([b ^ mask]))
    return pos


def _binunicode(s):
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw          # BINUNICODE


def _short_binunicode(s):
    raw = s.encode("utf-8")
    assert len(raw) < 256
    return b"\x8c" + bytes([len(raw)]) + raw                  # SHORT_BINUNICODE


def malicious_pickle(marker_path, form="global"):
    """Bytes of a pickle whose load calls os.system('touch <marker_path>'). Built by hand
    from opcodes so the test does not depend on how Python pickles functions."""
    command = "touch " + shlex.quote(marker_path)
    if form == "global":
        return (b"\x80\x02"                                   # PROTO 2
                + b"cposix\nsystem\n"                         # GLOBAL 'posix system'
                + _binunicode(command)                        # the command string
                + b"\x85"                                     # TUPLE1
                + b"R"                                        # REDUCE
                + b".")                                       # STOP
    if form == "stack_global":
        return (b"\x80\x04"                                   # PROTO 4
                + _short_binunicode("os")                     # module
                + _short_binunicode("system")                 # name
                + b"\x93"                                     # STACK_GLOBAL
                + _binunicode(command)
                + b"\x85"                                     # TUPLE1
                + b"R"                                        # REDUCE
                + b".")                                       # STOP
    raise ValueError("unknown form %r (global, stack_global)" % form)


def write_malicious(outfile, marker_path, form="global"):
    forms = ["global", "stack_global"] if form == "both" else [form]
    written = []
    for f in forms:
        path = outfile + ".stack_global" if (form == "both" and f == "stack_global") else outfile
        with open(path, "wb") as out:
            out.write(malicious_pickle(marker_path, f))
        written.append(path)
    return written


def _int(s):
    return int(s, 0)


def main(argv=None):
    ap = argparse.ArgumentParser(description="make damaged copies of checkpoint files")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("copy")
    p.add_argument("src")
    p.add_argument("dst")
    p = sub.add_parser("truncate")
    p.add_argument("file")
    p.add_argument("k", type=_int)
    p = sub.add_parser("flip")
    p.add_argument("file")
    p.add_argument("k", type=_int)
    p.add_argument("--mask", type=_int, default=0xFF)
    p = sub.add_parser("malicious")
    p.add_argument("outfile")
    p.add_argument("marker")
    p.add_argument("--form", choices=["global", "stack_global", "both"], default="global")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "copy":
            copy_checkpoint(args.src, args.dst)
        elif args.cmd == "truncate":
            truncate_file(args.file, args.k)
        elif args.cmd == "flip":
            flip_byte(args.file, args.k, args.mask)
        else:
            write_malicious(args.outfile, args.marker, args.form)
    except (OSError, ValueError) as e:
        print("damage.py: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
