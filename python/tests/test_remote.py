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


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 emulator on loopback (scripts/testsrv.py s3) with bucket ``test``, and the
    dummy credentials in the environment for the duration of the module."""
    p = subprocess.Popen(
        [sys.executable, str(TESTSRV), "--max-seconds", "300", "s3", "--bucket", "test"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    line = p.stdout.readline()
    if not line:
        p.wait(timeout=10)
        raise RuntimeError(f"testsrv s3 did not start: {p.stderr.read().decode()}")
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": json.loads(line)["url"]}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        p.stdin.close()
        p.wait(timeout=10)


def test_pack_to_s3_reads_back_as_the_local_pack(s3_endpoint, tree, tmp_path):
    """``shardpack.pack(src, "s3://...")`` uploads the bytes of a local pack (the shards,
    fetched through a cache, are the local shards byte for byte); a second pack there is
    refused without ``force`` and replaces the dataset with it; no staging folder is left."""
    local = tmp_path / "local"
    ref = shardpack.pack(tree, local)
    url = "s3://test/py-pack"
    tmpdir = Path(os.environ.get("TMPDIR", "/tmp"))
    staged_before = set(tmpdir.glob(".shardpack-upload.*"))
    got = shardpack.pack(tree, url)
    assert got["out"] == url and got["samples"] == ref["samples"]
    assert got["upload"]["shards"] == ref["shards"] and got["upload"]["replaced"] is False
    assert set(tmpdir.glob(".shardpack-upload.*")) == staged_before
    cache = tmp_path / "cache"
    ds = shardpack.open(url, mode="cache", cache_dir=cache)
    lds = shardpack.open(local)
    assert len(ds) == len(lds)
    for i in range(len(ds)):
        assert ds[i].fields() == lds[i].fields()
    assert ds.verify()["ok"]
    shards = {p.name: p.read_bytes() for p in cached_shards(cache)}
    assert shards == {p.name: p.read_bytes() for p in cached_shards(local)}
    with pytest.raises(shardpack.ShardpackError, match="manifest.json"):
        shardpack.pack(tree, url)
    again = shardpack.pack(tree, url, force=True)
    assert again["upload"]["replaced"] is True
    with pytest.raises(shardpack.ShardpackError, match="read-only"):
        shardpack.pack(tree, "http://127.0.0.1:9/ds")
