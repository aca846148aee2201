"""Dataset, Sample and Blob: round trip against the CLI's extract, indexing, keys, buffers,
errors, and import without torch."""

from __future__ import annotations

import gc
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import shardpack
from conftest import run_cli


def extracted(dataset: Path, tmp_path: Path) -> dict[bytes, bytes]:
    """Every record as the CLI's `extract` writes it: relative path (bytes) -> contents."""
    out = tmp_path / "x"
    run_cli("extract", dataset, out)
    files = {}
    base = os.fsencode(out)
    for dirpath, _, names in os.walk(base):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                files[os.path.relpath(p, base)] = f.read()
    return files


def test_round_trip_matches_cli_extract(dataset: Path, tmp_path: Path) -> None:
    ref = extracted(dataset, tmp_path)
    ds = shardpack.open(dataset)
    got = {}
    codecs = set()
    for s in ds:
        for name, blob in s.fields().items():
            got[s.key + b"." + name.encode()] = bytes(blob)
            codecs.add((name, blob.zero_copy))
    assert got == ref
    comp = {f["name"]: f["compression"] for f in ds.manifest["fields"]}
    # The fixture really covers all three codecs and the zero-copy path.
    assert comp["bin"] == "none" and comp["txt"] == "zstd" and comp["json"] == "zstd-dict"
    assert ("bin", True) in codecs and ("txt", False) in codecs and ("json", False) in codecs


def test_indexing_keys_and_metadata(dataset: Path) -> None:
    ds = shardpack.open(dataset)
    n = len(ds)
    assert n == 121
    assert ds[-1].index == n - 1 and ds[-n].index == 0
    with pytest.raises(IndexError):
        ds[n]
    with pytest.raises(IndexError):
        ds[-n - 1]
    assert [s.index for s in ds] == list(range(n))
    assert ds.fields == ["bin", "json", "txt"]
    assert ds.classes == ["class0", "class1", "class2"]
    m = ds.manifest
    assert m["samples"] == n and len(m["shards"]) == 5
    json.dumps(m)
    s = ds[5]
    assert ds.get(s.key).index == 5
    assert ds.get(s.key_str).index == 5
    assert ds.get(b"no/such") is None and ds.get("no/such") is None
    with pytest.raises(TypeError):
        ds.get(5)
    bad = [s for s in ds if s.key_str is None]
    assert len(bad) == 1 and bad[0].key == b"class0/caf\xe9\xff"
    assert ds.get(b"class0/caf\xe9\xff").index == bad[0].index
    assert bytes(bad[0]["bin"]) == b"\x00\x01non-utf8 key"
    assert {s.label for s in ds} == {0, 1, 2}
    assert "bin" in s and b"bin" in s and "nope" not in s
    with pytest.raises(KeyError):
        s["nope"]


def test_verify_report(dataset: Path) -> None:
    r = shardpack.open(dataset).verify()
    assert r["ok"] and r["problems"] == [] and r["samples"] == 121 and r["shards"] == 5


def test_buffer_protocol(dataset: Path) -> None:
    np = pytest.importorskip("numpy")
    ds = shardpack.open(dataset)
    s = ds[0]
    b = s["bin"]
    mv = memoryview(b)
    assert mv.readonly and mv.format == "B" and mv.nbytes == len(b)
    a = np.frombuffer(b, np.uint8)
    assert a.tobytes() == bytes(b)
    with pytest.raises((BufferError, TypeError)):
        # A writable view is refused.
        import ctypes

        (ctypes.c_char * len(b)).from_buffer(b)
    assert pickle.loads(pickle.dumps(b)) == bytes(b)
    assert b == bytes(b)


def test_pil_opens_a_field(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    src = tmp_path / "img" / "a"
    src.mkdir(parents=True)
    Image.new("RGB", (7, 5), (200, 10, 30)).save(src / "0.png")
    shardpack.pack(tmp_path / "img", tmp_path / "ds")
    s = shardpack.open(tmp_path / "ds")[0]
    im = Image.open(io.BytesIO(s["png"]))
    assert im.size == (7, 5) and im.getpixel((3, 3)) == (200, 10, 30)


def test_buffers_outlive_the_dataset(dataset: Path) -> None:
    ds = shardpack.open(dataset)
    want = [bytes(ds[i]["bin"]) for i in range(10)]
    views = [memoryview(ds[i]["bin"]) for i in range(10)]
    blobs = [ds[i]["txt"] for i in range(10) if "txt" in ds[i]]
    texts = [bytes(b) for b in blobs]
    del ds
    gc.collect()
    assert [bytes(v) for v in views] == want
    assert [bytes(b) for b in blobs] == texts


def test_pickle_dataset_and_sample(dataset: Path) -> None:
    ds = shardpack.open(dataset)
    ds2 = pickle.loads(pickle.dumps(ds))
    assert len(ds2) == len(ds) and ds2.path == ds.path
    s = pickle.loads(pickle.dumps(ds[3]))
    assert s.index == 3 and s.key == ds[3].key and bytes(s["bin"]) == bytes(ds[3]["bin"])


def test_errors(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(shardpack.ShardpackIOError) as e:
        shardpack.open(tmp_path / "missing")
    assert isinstance(e.value, OSError) and e.value.errno == 2
    assert str(tmp_path / "missing") in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(shardpack.ShardpackError, match="manifest.json"):
        shardpack.open(tmp_path / "empty")


def test_corrupt_record(corrupt_dataset: Path) -> None:
    ds = shardpack.open(corrupt_dataset)
    target = bytes(ds[7]["bin"])
    shard = next(
        p for p in sorted(corrupt_dataset.glob("shard-*.spk")) if target in p.read_bytes()
    )
    data = bytearray(shard.read_bytes())
    at = data.index(target) + len(target) // 2
    data[at] ^= 0xFF
    del ds
    gc.collect()
    shard.write_bytes(bytes(data))
    ds = shardpack.open(corrupt_dataset)
    with pytest.raises(shardpack.CorruptError, match="checksum"):
        ds[7]["bin"]
    r = ds.verify()
    assert not r["ok"] and len(r["problems"]) >= 1
    assert {p["kind"] for p in r["problems"]} >= {"record-checksum"}, r["problems"]
    loader = shardpack.Loader(ds, batch_size=16, shuffle="none")
    with pytest.raises(shardpack.CorruptError, match=shard.name):
        for _ in loader:
            pass
    # on_error="skip": only the bad sample is left out, every other one is delivered once.
    skipping = shardpack.Loader(ds, batch_size=16, shuffle="none", on_error="skip")
    got = [s.index for batch in skipping for s in batch]
    assert sorted(got) == [i for i in range(len(ds)) if i != 7]
    with pytest.raises(ValueError, match="on_error"):
        shardpack.Loader(ds, batch_size=16, on_error="ignore")


def test_import_without_torch_starts_no_thread() -> None:
    code = (
        "import sys, os, threading\n"
        "sys.modules['torch'] = None\n"  # any import of torch fails
        "import shardpack\n"
        "assert threading.active_count() == 1\n"
        "assert len(os.listdir('/proc/self/task')) == 1, os.listdir('/proc/self/task')\n"
        "ds = shardpack.open(sys.argv[1])\n"
        "l = shardpack.Loader(ds, batch_size=8)\n"
        "assert len(os.listdir('/proc/self/task')) == 1\n"
        "assert not l._native.running\n"
        "next(iter(l))\n"
        "assert l._native.running\n"
        "print('ok')\n"
    )
    from conftest import REPO

    ds = REPO / "fixtures" / "golden-v1"
    out = subprocess.run([sys.executable, "-c", code, str(ds)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_corrupt_shard_header(corrupt_dataset: Path) -> None:
    shard = sorted(corrupt_dataset.glob("shard-*.spk"))[1]
    data = bytearray(shard.read_bytes())
    data[0] ^= 0xFF  # the magic
    shard.write_bytes(bytes(data))
    with pytest.raises(shardpack.CorruptError) as e:
        shardpack.open(corrupt_dataset)
    assert shard.name in str(e.value)
    # A truncated shard: named, and an error rather than a crash.
    data[0] ^= 0xFF
    shard.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(shardpack.ShardpackError) as e2:
        shardpack.open(corrupt_dataset)
    assert shard.name in str(e2.value)


def test_stubs_match_the_module() -> None:
    """Every name the stub file declares exists at run time, with docs where it matters."""
    import ast

    from shardpack import _native

    tree = ast.parse((Path(shardpack.__file__).parent / "_native.pyi").read_text())
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            obj = getattr(_native, node.name)
            if isinstance(node, ast.ClassDef):
                for m in node.body:
                    if isinstance(m, ast.FunctionDef) and not m.name.startswith("__"):
                        assert hasattr(obj, m.name), (node.name, m.name)
    for obj in (shardpack.Loader, shardpack.open, shardpack.pack, shardpack.Dataset,
                shardpack.Sample, shardpack.Blob):
        assert obj.__doc__ and len(obj.__doc__) > 80, obj
