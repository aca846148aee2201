"""Remote datasets from Python: `shardpack.open(url, mode=..., cache_dir=..., cache_limit=...)`
over nginx on loopback (scripts/testsrv.py), and pickled remote Datasets and Loaders reopening
with the same read options."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import shardpack
from shardpack import _native

REPO = Path(__file__).resolve().parents[2]
TESTSRV = REPO / "scripts" / "testsrv.py"


def nginx_available() -> bool:
    return shutil.which("nginx") is not None or os.access("/usr/sbin/nginx", os.X_OK)


pytestmark = pytest.mark.skipif(
    not nginx_available(), reason="nginx not installed (scripts/remote-env.sh installs it)"
)


@pytest.fixture(scope="module")
def served(dataset: Path):
    """The conftest dataset served by nginx: its URL."""
    p = subprocess.Popen(
        [sys.executable, str(TESTSRV), "--max-seconds", "300", "http", "--root", str(dataset.parent)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"testsrv did not start: {p.stderr.read().decode()}")
    try:
        yield json.loads(line)["url"] + "/" + dataset.name
    finally:
        p.stdin.close()
        p.wait(timeout=10)


def cached_shards(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*.spk") if p.is_file())


@pytest.mark.parametrize("mode", ["cache", "stream"])
def test_pickled_remote_dataset_keeps_its_read_options(served, dataset, tmp_path, mode):
    cache = tmp_path / "cache"
    ds = shardpack.open(served, mode=mode, cache_dir=cache, cache_limit=10_000_000)
    copy = pickle.loads(pickle.dumps(ds))
    url, cache_dir, limit, m = copy.__reduce__()[1]
    assert (url, os.fspath(cache_dir), limit, m) == (served, os.fspath(cache), 10_000_000, mode)
    local = shardpack.open(dataset)
    assert copy[3].fields() == local[3].fields()
    assert _native._remote_requests(copy) > 0
    # Cache mode downloads into the cache_dir it was given; stream mode downloads no shard.
    got = cached_shards(cache)
    assert (len(got) > 0) == (mode == "cache"), got


def test_pickled_local_dataset_stays_a_path(dataset):
    ds = shardpack.open(dataset)
    assert ds.__reduce__()[1] == (dataset,)
    assert _native._remote_requests(pickle.loads(pickle.dumps(ds))) is None


def test_pickled_remote_loader_keeps_its_read_options(served, dataset, tmp_path):
    cache = tmp_path / "cache"
    ds = shardpack.open(served, mode="stream", cache_dir=cache, cache_limit=5_000_000)
    loader = shardpack.Loader(ds, batch_size=8, seed=3)
    first = [s.key for s in next(iter(loader))]
    copy = pickle.loads(pickle.dumps(loader))
    url, cache_dir, limit, m = copy.dataset.__reduce__()[1]
    assert (url, os.fspath(cache_dir), limit, m) == (served, os.fspath(cache), 5_000_000, "stream")
    rest = [s.key for b in copy for s in b]
    ref = [s.key for b in shardpack.Loader(dataset, batch_size=8, seed=3) for s in b]
    assert first + rest == ref
    assert cached_shards(cache) == []
