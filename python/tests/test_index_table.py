"""`shardpack index`: the sample index as a Parquet / Arrow IPC table, read back with pyarrow
and checked against the dataset itself (format-spec/index-table.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

import shardpack
from conftest import run_cli

pa = pytest.importorskip("pyarrow")
import pyarrow.ipc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def read(dataset: Path, tmp_path: Path, fmt: str):
    out = tmp_path / f"index.{fmt}"
    run_cli("index", dataset, "-o", out, "--format", fmt)
    assert not [p for p in tmp_path.iterdir() if "shardpack-tmp" in p.name], "temp file left"
    if fmt == "parquet":
        return pq.read_table(out)
    with pa.ipc.open_file(out) as f:
        return f.read_all()


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_index_table_matches_the_dataset(dataset: Path, tmp_path: Path, fmt: str) -> None:
    ds = shardpack.open(dataset)
    t = read(dataset, tmp_path, fmt)
    assert t.num_rows == len(ds)
    names = t.schema.names
    assert names[:6] == ["index", "key", "key_utf8", "label", "class", "shard"]
    fields = ds.fields
    for f in fields:
        assert f"{f}_size" in names and f"{f}_stored" in names and f"{f}_codec" in names
    meta = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
    assert meta["shardpack.index_table_version"] == "1"
    assert meta["shardpack.dataset_fingerprint"] == ds.fingerprint
    assert int(meta["shardpack.samples"]) == len(ds)
    assert t.schema.field("txt_size").metadata[b"shardpack.field"] == b"txt"
    assert t.schema.field("key").type == pa.binary()
    assert t.schema.field("index").type == pa.uint64()

    rows = t.to_pylist()
    classes = ds.classes
    non_utf8 = 0
    codecs = set()
    for i, row in enumerate(rows):
        s = ds[i]
        assert row["index"] == i
        assert row["key"] == s.key
        if s.key_str is None:
            non_utf8 += 1
        assert row["key_utf8"] == s.key_str
        assert row["label"] == s.label
        assert row["class"] == (classes[s.label] if s.label is not None else None)
        present = s.fields()
        for f in fields:
            if f in present:
                assert row[f"{f}_size"] == len(bytes(present[f])), (i, f)
                assert row[f"{f}_stored"] > 0 or row[f"{f}_size"] == 0
                assert row[f"{f}_codec"] in ("none", "zstd", "zstd-dict")
                codecs.add((f, row[f"{f}_codec"]))
            else:
                assert row[f"{f}_size"] is None and row[f"{f}_codec"] is None, (i, f)
    assert non_utf8 == 1, "the fixture's non-UTF-8 key has a null key_utf8"
    assert ("txt", "zstd") in codecs and ("json", "zstd-dict") in codecs and ("bin", "none") in codecs
    # Shards: non-decreasing, one per manifest entry.
    shards = [r["shard"] for r in rows]
    assert shards == sorted(shards) and len(set(shards)) == len(ds.manifest["shards"])


def test_filter_then_select(dataset: Path, tmp_path: Path) -> None:
    """The README's path: select rows in the table, then read exactly those samples."""
    ds = shardpack.open(dataset)
    t = read(dataset, tmp_path, "parquet")
    import pyarrow.compute as pc

    chosen = t.filter(pc.equal(t["class"], "class1"))["index"].to_pylist()
    assert chosen and all(ds[i].label == ds.classes.index("class1") for i in chosen)
    assert len(chosen) == sum(1 for s in ds if s.label == ds.classes.index("class1"))
    # Train on exactly that subset: the Loader serves each chosen sample once per epoch.
    loader = shardpack.Loader(ds, batch_size=8, seed=1, indices=chosen)
    served = [s.index for batch in loader for s in batch]
    assert sorted(served) == sorted(chosen)


def test_index_of_a_missing_dataset_fails_without_output(tmp_path: Path) -> None:
    import subprocess

    from conftest import cli_path

    out = tmp_path / "i.parquet"
    r = subprocess.run(
        [str(cli_path()), "index", str(tmp_path / "nope"), "-o", str(out)], capture_output=True
    )
    assert r.returncode == 1 and b"does not exist" in r.stderr
    assert not out.exists()


def test_dataset_index_is_the_same_table_without_a_file(dataset: Path, tmp_path: Path) -> None:
    ds = shardpack.open(dataset)
    t = ds.index()
    assert isinstance(t, pa.Table)
    ref = read(dataset, tmp_path, "arrow")
    assert t.schema.names == ref.schema.names
    assert t.schema.metadata == ref.schema.metadata
    assert t.to_pylist() == ref.to_pylist()
    # The table owns its memory: it outlives the dataset.
    del ds
    import gc

    gc.collect()
    assert t.num_rows == ref.num_rows and t.column("key").to_pylist() == ref.column("key").to_pylist()
