"""shardpack.MixedLoader: several datasets mixed by weight, resumable."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import shardpack


def _pairs(lo: shardpack.MixedLoader) -> list[tuple[int, int]]:
    return [(src, s.index) for batch in lo for src, s in batch]


def test_mix_counts_batches_and_resume(dataset: Path) -> None:
    n = len(shardpack.open(dataset))
    kw = dict(batch_size=10, seed=2, chunk_bytes=4096, window_chunks=2, io_threads=1)
    lo = shardpack.MixedLoader([(dataset, 3), (dataset, {"samples": 20})], epoch_samples=80, **kw)
    assert lo.counts == [60, 20]
    got = _pairs(lo)
    assert Counter(s for s, _ in got) == {0: 60, 1: 20}
    assert len(set(i for s, i in got if s == 0)) == 60
    for k in range(0, 80, 10):
        assert sum(1 for s, _ in got[k:k + 10] if s == 0) in (7, 8)
    # Deterministic; resumable from JSON after three batches.
    again = shardpack.MixedLoader([(dataset, 3), (dataset, {"samples": 20})], epoch_samples=80, **kw)
    it = iter(again)
    head = [(src, s.index) for _ in range(3) for src, s in next(it)]
    st = json.loads(json.dumps(again.state_dict()))
    other = shardpack.MixedLoader([(dataset, 3), (dataset, {"samples": 20})], epoch_samples=80, **kw)
    other.load_state_dict(st)
    assert head + _pairs(other) == got
    # Another epoch, another order; other weights refuse the state.
    other.set_epoch(1)
    assert _pairs(other) != got
    bad = shardpack.MixedLoader([(dataset, 2), (dataset, {"samples": 20})], epoch_samples=80, **kw)
    with pytest.raises(shardpack.ShardpackError, match="weight"):
        bad.load_state_dict(st)
    with pytest.raises(shardpack.ShardpackValueError, match="more than"):
        shardpack.MixedLoader([(dataset, {"samples": n + 1})], **kw)
