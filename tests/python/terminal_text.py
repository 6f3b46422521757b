"""How dcpp spells text from a file or a command line on a terminal (README, "The CLI"), written
from the documentation alone: Python's strict UTF-8 decoder decides what is valid UTF-8.
Any interpreter (no torch).

  terminal_text.py FILE     FILE holds one byte string a line, in hex; prints for each its
                            escape units, in hex, joined with ","; then a tab and the same in
                            message style (a backslash kept)

Imported by tests/cli/control_keys.py (shown()).
"""
import sys


def units(raw, keep_backslash=False):
    """The escaped spelling of the bytes `raw`, one piece per character or byte it stands for."""
    out, i = [], 0
    while i < len(raw):
        char = None
        for n in (1, 2, 3, 4):
            try:
                char = raw[i:i + n].decode("utf-8")  # strict: no surrogates, no overlong forms
                break
            except UnicodeDecodeError:
                pass
        if char is None:  # not part of valid UTF-8
            out.append("\\x%02x" % raw[i])
            i += 1
            continue
        i += n
        code = ord(char)
        if char in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char])
        elif char == "\\" and not keep_backslash:
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append("\\x%02x" % code)
        elif 0x80 <= code <= 0x9F:
            out.append("\\u%04x" % code)
        else:
            out.append(char)
    return out


def shown(raw):
    return "".join(units(raw))


def main():
    with open(sys.argv[1]) as f:
        for line in f:
            raw = bytes.fromhex(line.strip())
            print("\t".join(",".join(u.encode("utf-8").hex() for u in units(raw, keep)) for keep in (False, True)))


if __name__ == "__main__":
    main()
