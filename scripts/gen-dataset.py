#!/usr/bin/env python3
"""Writes a deterministic pseudo-random file: gen-dataset.py PATH SIZE [SEED].

SIZE takes K/M/G suffixes (powers of 1024). The bytes are SHAKE-128 of the
seed, so the same size and seed always give the same file on any machine.
"""
import hashlib
import os
import sys

def parse(s):
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = s.strip().upper().removesuffix("IB").removesuffix("B")
    u = s[-1] if s and s[-1] in units else ""
    return int(s[: len(s) - len(u)]) * units[u]

def main():
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: gen-dataset.py PATH SIZE [SEED]")
    path, size = sys.argv[1], parse(sys.argv[2])
    seed = sys.argv[3] if len(sys.argv) == 4 else "dmafile-demo"
    block = 1 << 20
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        done = 0
        i = 0
        while done < size:
            n = min(block, size - done)
            f.write(hashlib.shake_128(f"{seed}:{i}".encode()).digest(n))
            done += n
            i += 1
    os.replace(tmp, path)

main()
