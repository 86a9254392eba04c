#!/usr/bin/env python3
"""tests/fuzz/seed_corpus.py OUT - the hand-written seeds the frame fuzzer started from.

Each input is one byte (the seed of how the fuzzer splits the rest into reads) and a
byte stream: well-formed frames of every type, several in a row, and the edges a
decoder gets wrong (a length of exactly the maximum and one past it, 4 GiB, a stream
cut inside a header or a payload, fields that run past their payload). The committed
corpus (corpus/frame) is these plus what libFuzzer found from them, merged.
"""
import os
import struct
import sys

MAX = 4096


def frame(t, payload=b""):
    return struct.pack(">IB", len(payload), t) + payload


def seq(n, rest=b""):
    return struct.pack(">Q", n) + rest


def members(last, names):
    return frame(0x85, bytes([last]) + struct.pack(">H", len(names)) + b"".join(bytes([len(n)]) + n for n in names))


seeds = {
    "join": frame(0x01, b"ana"),
    "say": frame(0x02, "ol\u00e1 \u20ac \U0001d11e".encode()),
    "list-leave": frame(0x03) + frame(0x04),
    "welcome": frame(0x81, seq(7, b"ana")),
    "message": frame(0x82, seq(8, bytes([3]) + b"ana" + b"hello\tthere")),
    "joined-left": frame(0x83, seq(9, b"bo")) + frame(0x84, seq(10, b"bo")),
    "members": members(1, [b"ana", b"bo", "Jos\u00e9".encode()]),
    "members-part": members(0, [b"x" * 32] * 3),
    "closing": frame(0x86),
    "error": frame(0xFF, struct.pack(">H", 4) + b"name taken"),
    "max": frame(0x02, b"m" * MAX),
    "one-over": struct.pack(">IB", MAX + 1, 0x02) + b"m" * 16,
    "four-gib": b"\xff\xff\xff\xff\x02hello",
    "cut-header": frame(0x02, b"hi") + b"\x00\x00",
    "cut-payload": struct.pack(">IB", 10, 0x02) + b"abc",
    "name-past-end": frame(0x82, seq(1, bytes([200]) + b"ana")),
    "bad-utf8": frame(0x83, seq(2, b"\xed\xa0\x80")) + frame(0x82, seq(3, bytes([1]) + b"a" + b"\xc0\x80")),
    "count-past-end": frame(0x85, b"\x01\x00\x02\x01a"),
    "unknown-types": frame(0x00) + frame(0x7F, b"?") + frame(0x90, b"??"),
    "many-small": b"".join(frame(0x82, seq(i, bytes([1]) + b"z" + b"m" * (i % 7 + 1))) for i in range(40)),
}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, stream in seeds.items():
        for split in (0, 37):  # one read, and reads of 1 to 9 bytes
            with open(os.path.join(out, f"seed-{name}-{split}"), "wb") as f:
                f.write(bytes([split]) + stream)
    print(f"{2 * len(seeds)} seeds in {out}")


if __name__ == "__main__":
    main()
