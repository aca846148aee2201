#!/usr/bin/env python3
"""Generates a synthetic ImageFolder-style tree for benchmarks: N files of incompressible bytes
(like JPEGs) spread over C class folders, sizes drawn around a mean (default ~16 KiB), fixed
seed, so the same command always writes the same tree.

    scripts/gen-tree.py DIR --files 200000 --classes 100 --mean-kib 16
"""
import argparse
import os
import random


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--mean-kib", type=float, default=16.0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    mean = a.mean_kib * 1024
    # One pool of random bytes, sliced at random offsets: deterministic and fast.
    pool = random.Random(a.seed + 1).randbytes(8 << 20)
    total = 0
    for c in range(a.classes):
        os.makedirs(os.path.join(a.dir, f"class{c:04d}"), exist_ok=True)
    for i in range(a.files):
        c = i % a.classes
        size = max(1, int(rng.uniform(0.25, 1.75) * mean))
        off = rng.randrange(0, len(pool) - size)
        with open(os.path.join(a.dir, f"class{c:04d}", f"{i:08d}.jpg"), "wb") as f:
            f.write(pool[off:off + size])
        total += size
    print(f"wrote {a.files} files, {total / 1e9:.2f} GB, into {a.dir}")


if __name__ == "__main__":
    main()
