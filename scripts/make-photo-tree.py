#!/usr/bin/env python3
"""A folder of JPEG photos for pack benchmarks: N random crops (160-400 px, scaled 0.8-1.6x,
half of them mirrored, quality 80-95) of the photos in SRC, one class folder per source photo.
The content is real photography, so the JPEGs compress like real ones (not at all).

    scripts/make-photo-tree.py SRC OUT N

SRC: any folder of .png/.jpg photos. The README's figures used the photos that scikit-image
0.26 ships (`pip download --no-deps scikit-image`, then unzip 'skimage/data/*' from the wheel):
astronaut, brick, camera, chelsea, coffee, coins, color, grass, gravel, hubble_deep_field,
ihc, moon, motorcycle_left, motorcycle_right, retina, rocket. Needs Pillow. Deterministic (seed 1).
"""
import random
import sys
from pathlib import Path

from PIL import Image

PHOTOS = ["astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
          "hubble_deep_field", "ihc", "motorcycle_left", "motorcycle_right", "retina", "rocket",
          "moon", "color"]


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, out, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    files = {p.stem: p for p in sorted(src.iterdir()) if p.suffix.lower() in (".png", ".jpg", ".jpeg")}
    names = [s for s in PHOTOS if s in files] or sorted(files)
    if not names:
        sys.exit(f"{src}: no .png or .jpg photos there")
    rng = random.Random(1)
    imgs = {s: Image.open(files[s]).convert("RGB") for s in names}
    for i in range(n):
        name = names[i % len(names)]
        im = imgs[name]
        w, h = im.size
        cw, ch = rng.randint(min(w, 160), min(w, 400)), rng.randint(min(h, 160), min(h, 400))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        c = im.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            c = c.transpose(Image.FLIP_LEFT_RIGHT)
        s = rng.uniform(0.8, 1.6)
        c = c.resize((int(cw * s), int(ch * s)), Image.BILINEAR)
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        c.save(d / f"{i:06d}.jpg", quality=rng.randint(80, 95))


if __name__ == "__main__":
    main()
