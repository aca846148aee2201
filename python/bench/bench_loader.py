#!/usr/bin/env python3
"""The Python path's speed against the Rust loader's, on one dataset, in one run.

    python python/bench/bench_loader.py WORKDIR [--files 20000] [--mean-kib 16] [--bin PATH]

Makes (or reuses) a synthetic ImageFolder tree of incompressible files in WORKDIR/tree
(scripts/gen-tree.py), packs it with the CLI into WORKDIR/ds, then measures, each phase with a
cold page cache (the shard and loose files evicted with posix_fadvise(DONTNEED)):

1. `shardpack bench WORKDIR/ds --json`: the Rust loader's samples/s (direct I/O on);
2. `shardpack.Loader` (batch 256, direct I/O on), touching every field of every sample (a
   memoryview of each field and its first byte: the bytes are already in memory, the view is
   what a decoder gets);
3. `shardpack.torch.ShardIterableDataset` in a `DataLoader` (batch 256, no decoding) with
   `num_workers` 0 and 2, against a torchvision-style dataset of the loose files (one
   `open().read()` per sample) in a `DataLoader` with the same workers (needs torch);
4. the Rust loader alone in this process (`_Loader._drain`: no Python object per sample),
   cold, as a second reference;
5. warm (files cached, buffered reads, best of 3): microseconds per sample of the Python loop
   and of the Rust loader alone; their difference is the Python path's per-sample overhead.

Prints one JSON object. Figures from a small run on a shared machine say little about a
large one: report them with their size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def evict(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def loose_files(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*") if p.is_file())


def python_loader(ds_path: Path, direct_io: str) -> tuple[float, int]:
    import shardpack

    loader = shardpack.Loader(ds_path, batch_size=256, seed=0, direct_io=direct_io)
    n = 0
    t = time.perf_counter()
    for batch in loader:
        for s in batch:
            for b in s.fields().values():
                mv = memoryview(b)
                if len(mv):
                    mv[0]
            n += 1
    return time.perf_counter() - t, n


def drain(ds_path: Path, direct_io: str) -> float:
    """The Rust loader's samples/s with no Python object per sample (`_Loader._drain`)."""
    import shardpack

    loader = shardpack.Loader(ds_path, batch_size=256, seed=0, direct_io=direct_io)
    t = time.perf_counter()
    n = loader._native._drain()
    return n / (time.perf_counter() - t)


def torch_phase(ds_path: Path, tree: Path, workers: int) -> dict[str, float]:
    import torch.utils.data as tud

    from shardpack.torch import ShardIterableDataset, collate_samples

    files = loose_files(tree)

    class Loose(tud.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int) -> bytes:
            with open(files[i], "rb") as f:
                return f.read()

    def run(dl: tud.DataLoader) -> tuple[float, int]:  # type: ignore[type-arg]
        n = 0
        t = time.perf_counter()
        for b in dl:
            n += len(b)
        return time.perf_counter() - t, n

    shards = sorted(ds_path.glob("shard-*.spk"))
    evict(shards)
    ds = ShardIterableDataset(ds_path, seed=0, transform=_raw, direct_io="on")
    spk_s, spk_n = run(tud.DataLoader(ds, batch_size=256, num_workers=workers,
                                      collate_fn=collate_samples))
    evict(files)
    loose_s, loose_n = run(tud.DataLoader(Loose(), batch_size=256, num_workers=workers,
                                          shuffle=True, collate_fn=collate_samples))
    return {
        f"torch_shardpack_w{workers}_samples_s": spk_n / spk_s,
        f"torch_loose_w{workers}_samples_s": loose_n / loose_s,
        f"torch_ratio_w{workers}": (spk_n / spk_s) / (loose_n / loose_s),
    }


def _raw(sample):  # type: ignore[no-untyped-def]
    # No decoding: the bytes of the first field (what a decode step would receive).
    return bytes(next(iter(sample.fields().values())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--mean-kib", type=float, default=16)
    ap.add_argument("--bin", type=Path, default=None, help="the shardpack CLI (default: target/release)")
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args()
    cli = a.bin or REPO / "target" / "release" / "shardpack"
    tree, ds_path = a.workdir / "tree", a.workdir / "ds"
    if not tree.exists():
        subprocess.run([sys.executable, REPO / "scripts" / "gen-tree.py", tree, "--files",
                        str(a.files), "--classes", "100", "--mean-kib", str(a.mean_kib)], check=True)
    if not ds_path.exists():
        subprocess.run([cli, "pack", tree, ds_path, "--quiet"], check=True)
    shards = sorted(ds_path.glob("shard-*.spk"))

    rust = json.loads(subprocess.run([cli, "bench", ds_path, "--json"], check=True,
                                     capture_output=True).stdout)
    evict(shards)
    cold_s, n = python_loader(ds_path, "on")
    out: dict[str, object] = {
        "files": a.files,
        "mean_kib": a.mean_kib,
        "samples": n,
        "rust_loader_samples_s": rust["loader_samples_s"],
        "python_loader_samples_s": n / cold_s,
    }
    out["python_to_rust"] = out["python_loader_samples_s"] / rust["loader_samples_s"]  # type: ignore[operator]
    # Rust alone in this process, cold, for a second reference: the same loader, no objects.
    evict(shards)
    out["rust_in_process_samples_s"] = drain(ds_path, "on")
    # Warm: the shards cached (buffered reads); best of 3 each, alternating.
    python_loader(ds_path, "off")
    py_warm, rust_warm = [], []
    for _ in range(3):
        s, n = python_loader(ds_path, "off")
        py_warm.append(s / n)
        rust_warm.append(1 / drain(ds_path, "off"))
    out["python_warm_us_per_sample"] = min(py_warm) * 1e6
    out["rust_warm_us_per_sample"] = min(rust_warm) * 1e6
    out["python_overhead_us_per_sample"] = (min(py_warm) - min(rust_warm)) * 1e6
    if not a.no_torch:
        for w in (0, 2):
            out.update(torch_phase(ds_path, tree, w))
    out["note"] = "one small run on a shared machine; cold = evicted with posix_fadvise"
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
