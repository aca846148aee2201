#!/usr/bin/env python3
"""The Python path's speed against the Rust loader's and against loose files, in one run.

    python python/bench/bench_loader.py WORKDIR [--files 20000] [--mean-kib 16] [--rounds 3]
                                        [--workers 0,2] [--bin PATH] [--no-torch]
                                        [--drop-caches]

Makes (or reuses) a synthetic ImageFolder tree of incompressible files in WORKDIR/tree
(scripts/gen-tree.py), packs it with the CLI into WORKDIR/ds (raw records), then runs
`--rounds` rounds. Every measured pass starts with a cold page cache: every shard file and
every loose file is evicted with posix_fadvise(DONTNEED) (and, with `--drop-caches`, as root,
`echo 3 > /proc/sys/vm/drop_caches` as well, which also drops directory entries and inodes,
for the whole machine). The contenders of a round run in a rotated order, so no contender
always runs first or last. Each round measures:

- `rust_cli`: `shardpack bench WORKDIR/ds --json`, its `loader_samples_s` (the Rust loader in
  its own process: batch 256, direct I/O on, 8 I/O threads);
- `python`: `shardpack.Loader(batch_size=256, direct_io="on")`, touching every field of every
  sample (`sample.fields()`, a memoryview of each field and its first byte: the bytes are
  already in memory, the view is what a decoder gets);
- `drain`: the same Loader's batches taken inside Rust (`_Loader._drain`: no Python object per
  sample), through the same feeder thread: the Rust loader's rate in this process;
- with torch, for each `--workers` count W: `torch_spk_wW`, `ShardIterableDataset` in a
  `DataLoader(batch_size=256, num_workers=W)` yielding each sample's bytes as a buffer (no
  decoding: the zero-copy `Blob` with W = 0, a `bytes` copy from a worker process), and
  `torch_loose_wW`, a torchvision-style map-style dataset of the loose files (one
  `open().read()` per sample in `__getitem__`, the DataLoader's own shuffle, the same batch
  size, workers and collate function, the same bytes).

For the torch passes it also records the seconds to the first batch (worker processes
starting, and the loader's first window of chunks read before its first sample) and the rate
after it: on a small dataset the start is a large part of the epoch.

Then, warm (the shards cached, buffered reads), `--rounds` alternating passes of `python` and
`drain`: their per-sample times and the difference, the Python path's per-sample overhead in
microseconds (medians).

Prints the per-round figures, the medians, and the ratios (each round's ratio of two
contenders measured minutes apart, then the median over rounds) as one JSON object. On a
shared machine the absolute rates swing; compare ratios, and report the dataset size and the
machine with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]


def evict(paths: list[Path], drop_caches: bool) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if drop_caches:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


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


def drain(ds_path: Path, direct_io: str) -> tuple[float, int]:
    """The Rust loader's batches taken in Rust (`_Loader._drain`): no Python object per
    sample."""
    import shardpack

    loader = shardpack.Loader(ds_path, batch_size=256, seed=0, direct_io=direct_io)
    t = time.perf_counter()
    n = loader._native._drain()
    return time.perf_counter() - t, n


def _raw(sample):  # type: ignore[no-untyped-def]
    # No decoding: the sample's field as the buffer a decode step would receive (the
    # generated tree has one file, so one field, per sample). In the main process that is the
    # zero-copy Blob; from a worker process it is pickled as a bytes copy, like the loose
    # file's bytes.
    for b in sample.fields().values():
        return b


class Loose:
    """A torchvision-style dataset of loose files: one open() + read() per `__getitem__`."""

    def __init__(self, files: list[Path]) -> None:
        self.files = [os.fspath(p) for p in files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> bytes:
        with open(self.files[i], "rb") as f:
            return f.read()


FIRST_BATCH: dict[str, list[tuple[float, float]]] = {}


def torch_pass(name: str, make: Callable[[], Any], workers: int,
               shuffle: bool) -> tuple[float, int]:
    """One epoch through a DataLoader; also records (seconds to the first batch, samples/s
    after it) in FIRST_BATCH[name]: the start (worker processes, the first read) apart from
    the steady rate."""
    import torch.utils.data as tud

    from shardpack.torch import collate_samples

    dl = tud.DataLoader(make(), batch_size=256, num_workers=workers, shuffle=shuffle or None,
                        collate_fn=collate_samples)
    n = 0
    first = None
    t = time.perf_counter()
    for b in dl:
        if first is None:
            first = (time.perf_counter() - t, len(b))
        n += len(b)
    s = time.perf_counter() - t
    if first is not None:
        rest = s - first[0]
        FIRST_BATCH.setdefault(name, []).append(
            (first[0], (n - first[1]) / rest if rest > 0 else 0.0))
    return s, n


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--mean-kib", type=float, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="0,2", help="DataLoader num_workers to measure")
    ap.add_argument("--bin", type=Path, default=None,
                    help="the shardpack CLI (default: target/release/shardpack)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--drop-caches", action="store_true",
                    help="also echo 3 > /proc/sys/vm/drop_caches before each pass (root)")
    a = ap.parse_args()
    cli = a.bin or REPO / "target" / "release" / "shardpack"
    tree, ds_path = a.workdir / "tree", a.workdir / "ds"
    if not tree.exists():
        subprocess.run([sys.executable, REPO / "scripts" / "gen-tree.py", tree, "--files",
                        str(a.files), "--classes", "100", "--mean-kib", str(a.mean_kib)],
                       check=True)
    if not ds_path.exists():
        subprocess.run([cli, "pack", tree, ds_path, "--quiet"], check=True)
    shards = sorted(ds_path.glob("shard-*.spk"))
    files = loose_files(tree)
    everything = shards + files
    workers = [int(w) for w in a.workers.split(",") if w != ""]

    import shardpack

    ds = shardpack.open(ds_path)
    raw = all(f.get("stored_bytes") == f.get("raw_bytes") for f in ds.manifest["fields"])

    def cold(fn: Callable[[], tuple[float, int]]) -> Callable[[], tuple[float, int]]:
        def run() -> tuple[float, int]:
            evict(everything, a.drop_caches)
            return fn()
        return run

    def rust_cli() -> tuple[float, int]:
        # `bench` evicts the shards itself before its loader pass.
        r = json.loads(subprocess.run([cli, "bench", ds_path, "--json"], check=True,
                                      capture_output=True).stdout)
        return len(ds) / r["loader_samples_s"], len(ds)

    contenders: dict[str, Callable[[], tuple[float, int]]] = {
        "rust_cli": cold(rust_cli),
        "python": cold(lambda: python_loader(ds_path, "on")),
        "drain": cold(lambda: drain(ds_path, "on")),
    }
    if not a.no_torch:
        from shardpack.torch import ShardIterableDataset

        for w in workers:
            contenders[f"torch_spk_w{w}"] = cold(
                lambda w=w: torch_pass(f"torch_spk_w{w}", lambda: ShardIterableDataset(
                    ds_path, seed=0, transform=_raw, direct_io="on"), w, shuffle=False))
            contenders[f"torch_loose_w{w}"] = cold(
                lambda w=w: torch_pass(f"torch_loose_w{w}", lambda: Loose(files), w,
                                       shuffle=True))

    names = list(contenders)
    rates: dict[str, list[float]] = {k: [] for k in names}
    for r in range(a.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            s, n = contenders[k]()
            if n != len(ds) and not k.startswith("torch_spk"):
                raise SystemExit(f"{k} took {n} samples of {len(ds)}")
            rates[k].append(n / s)
        print(f"round {r + 1}: " + ", ".join(f"{k} {rates[k][-1]:,.0f}/s" for k in names),
              file=sys.stderr)

    def ratio(x: str, y: str) -> dict[str, Any]:
        per = [p / q for p, q in zip(rates[x], rates[y])]
        return {"median": median(per), "rounds": per}

    out: dict[str, Any] = {
        "files": len(files),
        "samples": len(ds),
        "bytes": sum(p.stat().st_size for p in files),
        "mean_kib": a.mean_kib,
        "raw_records": raw,
        "rounds": a.rounds,
        "cold": "posix_fadvise(DONTNEED) on every shard and loose file before every pass"
        + (" + drop_caches" if a.drop_caches else ""),
        "samples_s": {k: {"median": median(v), "rounds": v} for k, v in rates.items()},
        "python_to_rust_cli": ratio("python", "rust_cli"),
        "python_to_drain": ratio("python", "drain"),
    }
    for w in workers if not a.no_torch else []:
        out[f"torch_w{w}_spk_to_loose"] = ratio(f"torch_spk_w{w}", f"torch_loose_w{w}")
    out["torch_first_batch_s"] = {k: median([f for f, _ in v]) for k, v in FIRST_BATCH.items()}
    out["torch_after_first_batch_samples_s"] = {
        k: median([r for _, r in v]) for k, v in FIRST_BATCH.items()}

    # Warm: everything cached, buffered reads; alternating passes.
    python_loader(ds_path, "off")
    py_us, rust_us = [], []
    for _ in range(a.rounds):
        s, n = python_loader(ds_path, "off")
        py_us.append(s / n * 1e6)
        s, n = drain(ds_path, "off")
        rust_us.append(s / n * 1e6)
    out["warm_us_per_sample"] = {
        "python": median(py_us),
        "drain": median(rust_us),
        "python_overhead": median([p - q for p, q in zip(py_us, rust_us)]),
        "rounds_python": py_us,
        "rounds_drain": rust_us,
    }
    out["machine"] = f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the end"
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
