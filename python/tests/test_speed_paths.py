"""The fast paths of the Python loader keep their promises: the feeder's batches (full,
exact ends, drop_last), `fields()` with shared name strings, and a transform's Blob copied to
bytes in DataLoader workers only."""

from __future__ import annotations

from pathlib import Path

import pytest

import shardpack


def test_batches_are_full_and_end_exactly(dataset: Path) -> None:
    ds = shardpack.open(dataset)
    n = len(ds)
    for bs in (1, 7, 64, n, n + 5):
        loader = shardpack.Loader(ds, batch_size=bs, seed=2)
        sizes = [len(b) for b in loader]
        assert sum(sizes) == n and all(s == bs for s in sizes[:-1]), (bs, sizes)
        assert loader.state_dict()["samples_consumed"] == n
        dropping = shardpack.Loader(ds, batch_size=bs, seed=2, drop_last=True)
        assert [len(b) for b in dropping] == [bs] * (n // bs)
        assert dropping.state_dict()["samples_consumed"] == n // bs * bs


def test_fields_names_and_bytes(dataset: Path) -> None:
    ds = shardpack.open(dataset)
    loader = shardpack.Loader(ds, batch_size=16, shuffle="none")
    for batch in loader:
        for s in batch:
            stored = ds[s.index]
            got = s.fields()
            assert list(got) == list(stored.fields()), s.index
            assert {k: bytes(v) for k, v in got.items()} == {
                k: bytes(v) for k, v in stored.fields().items()
            }
            for name in got:
                assert name in s and bytes(s[name]) == bytes(got[name])
    # The name strings are shared, not rebuilt per sample.
    a, b = next(iter(shardpack.Loader(ds, batch_size=2, shuffle="none")))
    ka, kb = next(iter(a.fields())), next(iter(b.fields()))
    assert ka == kb and ka is kb


def _field(sample):  # type: ignore[no-untyped-def]
    return sample["bin"]


@pytest.mark.parametrize("workers", [0, 2])
def test_transform_blob_in_process_and_bytes_from_workers(dataset: Path, workers: int) -> None:
    tud = pytest.importorskip("torch.utils.data")
    from shardpack.torch import ShardIterableDataset, collate_samples

    ds = shardpack.open(dataset)
    want = sorted(bytes(s["bin"]) for s in ds)
    sid = ShardIterableDataset(dataset, transform=_field, seed=4, drop_last=True)
    got = [x for b in tud.DataLoader(sid, batch_size=8, num_workers=workers,
                                     collate_fn=collate_samples) for x in b]
    kinds = {type(x) for x in got}
    assert kinds == ({shardpack.Blob} if workers == 0 else {bytes}), kinds
    if workers == 0:
        assert all(x.zero_copy for x in got)
    got_bytes = sorted(bytes(x) for x in got)
    assert set(got_bytes) <= set(want) and len(got_bytes) == len(want) // (workers or 1) * (
        workers or 1
    )
