#!/usr/bin/env python3
"""Generate the small example tree under fixtures/example/ (Python 3 standard library only).

Three ImageFolder classes of 20 samples each. Every sample is three files sharing a key:

    <class>/<NNNN>.png   a real 64x64 RGB PNG (a class-specific pattern with seeded noise)
    <class>/<NNNN>.txt   a one-line caption
    <class>/<NNNN>.json  metadata (class, index, size, pattern parameters)

The output is deterministic: every random choice comes from random.Random seeded by the class
and sample index, and nothing depends on the time, the host or the file system. PNG pixel data
is compressed with zlib at level 9; classic zlib has produced the same bytes for the same input
and level for many releases (a zlib-ng build may compress differently, while the pixels stay the
same).

    python3 scripts/make-example.py                 # writes fixtures/example/
    python3 scripts/make-example.py --out /tmp/ex   # somewhere else
"""

import argparse
import json
import math
import os
import random
import shutil
import struct
import zlib

SIZE = 64
PER_CLASS = 20
CLASSES = ["checks", "rings", "stripes"]
PALETTE = [
    ("red", (230, 40, 40)),
    ("orange", (240, 140, 30)),
    ("yellow", (230, 210, 40)),
    ("green", (60, 180, 60)),
    ("teal", (30, 160, 160)),
    ("blue", (40, 80, 220)),
    ("violet", (140, 60, 200)),
    ("pink", (230, 90, 170)),
]


def png(width, height, rows):
    """Encode 8-bit RGB rows (each a bytes of width*3) as a PNG file."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + row for row in rows)  # filter type 0 (None) on every row
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def image(cls, rng):
    """Pixels and parameters of one sample: a class-specific pattern in a random colour, with
    random phase, scale and a little noise (so the PNGs compress like photos, not like flat
    drawings)."""
    name, (r0, g0, b0) = rng.choice(PALETTE)
    scale = rng.uniform(4.0, 12.0)
    phase = rng.uniform(0, 2 * math.pi)
    angle = rng.uniform(0, math.pi)
    cx, cy = rng.uniform(16, 48), rng.uniform(16, 48)
    noise = rng.randint(4, 12)
    ca, sa = math.cos(angle), math.sin(angle)
    rows = []
    for y in range(SIZE):
        row = bytearray()
        for x in range(SIZE):
            if cls == "stripes":
                t = 0.5 + 0.5 * math.sin((x * ca + y * sa) / scale * 2 + phase)
            elif cls == "rings":
                t = 0.5 + 0.5 * math.cos(math.hypot(x - cx, y - cy) / scale * 3 + phase)
            else:  # checks
                u = int((x * ca + y * sa + 100) / scale)
                v = int((-x * sa + y * ca + 100) / scale)
                t = 0.85 if (u + v) % 2 else 0.15
            shade = 0.35 + 0.65 * t
            for base in (r0, g0, b0):
                c = int(base * shade) + rng.randint(-noise, noise)
                row.append(max(0, min(255, c)))
        rows.append(bytes(row))
    params = {
        "colour": name,
        "rgb": [r0, g0, b0],
        "scale": round(scale, 3),
        "phase": round(phase, 4),
        "angle_deg": round(math.degrees(angle), 2),
        "noise": noise,
    }
    if cls == "rings":
        params["center"] = [round(cx, 2), round(cy, 2)]
    return rows, params


def caption(cls, params):
    what = {
        "checks": "a tilted checkerboard",
        "rings": "concentric rings",
        "stripes": "diagonal stripes",
    }[cls]
    size = "fine" if params["scale"] < 8 else "broad"
    return f"{what} in {params['colour']}, {size} pattern, noise level {params['noise']}\n"


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.join(here, "..", "fixtures", "example")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=default_out, help="output folder (replaced)")
    args = ap.parse_args()

    out = os.path.normpath(args.out)
    if os.path.exists(out):
        shutil.rmtree(out)
    total = 0
    for c, cls in enumerate(CLASSES):
        os.makedirs(os.path.join(out, cls))
        for i in range(PER_CLASS):
            rng = random.Random(1000 * (c + 1) + i)
            rows, params = image(cls, rng)
            meta = {
                "class": cls,
                "label": c,
                "index": i,
                "width": SIZE,
                "height": SIZE,
                "pattern": params,
                "generator": "scripts/make-example.py",
            }
            files = {
                "png": png(SIZE, SIZE, rows),
                "txt": caption(cls, params).encode(),
                "json": (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode(),
            }
            for ext, data in files.items():
                with open(os.path.join(out, cls, f"{i:04d}.{ext}"), "wb") as f:
                    f.write(data)
                total += len(data)
    n = len(CLASSES) * PER_CLASS
    print(f"wrote {n} samples ({3 * n} files, {total} bytes) to {out}")


if __name__ == "__main__":
    main()
