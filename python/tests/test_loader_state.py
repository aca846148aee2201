"""shardpack.Loader's state dict carries the library's checked LoaderState: elastic resume at
another world size, the documented keys, and refusals naming the field."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

import shardpack

N = 121


def test_state_dict_keys_and_one_global_state(dataset: Path) -> None:
    loaders = [shardpack.Loader(dataset, batch_size=5, seed=4, rank=r, world_size=3) for r in range(3)]
    for lo in loaders:
        next(iter(lo))
    states = [lo.state_dict() for lo in loaders]
    assert set(states[0]) == {
        "shardpack_loader_state", "version", "dataset", "seed", "epoch", "rank", "world_size",
        "samples_consumed", "shuffle", "chunk_bytes", "window_chunks", "drop_last", "segments",
        "batch_size",
    }
    assert states[0]["shardpack_loader_state"] == 2
    assert states[0]["dataset"] == shardpack.open(dataset).fingerprint
    assert [s["rank"] for s in states] == [0, 1, 2]
    assert all(dict(s, rank=0) == states[0] for s in states), "the same except for rank"
    json.dumps(states[0])


@pytest.mark.parametrize("drop_last", [False, True])
def test_stop_at_world_4_resume_at_other_world_sizes(dataset: Path, drop_last: bool) -> None:
    kw = dict(seed=6, epoch=1, chunk_bytes=4096, window_chunks=2, drop_last=drop_last)
    first = [shardpack.Loader(dataset, batch_size=4, rank=r, world_size=4, **kw) for r in range(4)]
    seen: set[int] = set()
    for lo in first:
        it = iter(lo)
        for _ in range(3):
            seen.update(s.index for s in next(it))
    state = json.loads(json.dumps(first[0].state_dict()))
    remaining = set(range(N)) - seen
    for world in (1, 2, 3, 8):
        got = []
        for r in range(world):
            lo = shardpack.Loader(dataset, batch_size=3, rank=r, world_size=world, **kw)
            lo.load_state_dict(state)
            assert lo.epoch == 1
            got.append([s.index for b in lo for s in b])
        n = len(remaining) // world if drop_last else -(-len(remaining) // world)
        if drop_last:
            n = n // 3 * 3  # and the short last batch is dropped
        assert [len(g) for g in got] == [n] * world, f"world {world}"
        c = collections.Counter(i for g in got for i in g)
        assert set(c) <= remaining
        if drop_last:
            assert all(v == 1 for v in c.values())
        else:
            assert set(c) == remaining
            assert sum(v - 1 for v in c.values()) == n * world - len(remaining)


def test_refusals_name_the_field_and_old_states(dataset: Path) -> None:
    st = shardpack.Loader(dataset, batch_size=8, seed=1, window_chunks=4).state_dict()
    with pytest.raises(shardpack.ShardpackError, match="window_chunks=4.*window_chunks=5"):
        shardpack.Loader(dataset, batch_size=8, seed=1, window_chunks=5).load_state_dict(st)
    old = {
        "shardpack_loader_state": 1, "dataset": st["dataset"], "seed": 1, "epoch": 0, "rank": 0,
        "world_size": 1, "samples_consumed": 8, "shuffle": "chunked", "chunk_bytes": 4 << 20,
        "window_chunks": 4, "batch_size": 8, "drop_last": False,
    }
    with pytest.raises(shardpack.ShardpackError, match="0.2.0"):
        shardpack.Loader(dataset, batch_size=8, seed=1, window_chunks=4).load_state_dict(old)
    # batch_size and the tuning options may change.
    lo = shardpack.Loader(dataset, batch_size=3, seed=1, window_chunks=4, io_threads=1)
    lo.load_state_dict(st)


def test_indices_subset_and_its_state(dataset: Path) -> None:
    want = list(range(10, 60)) + [100, 120]
    lo = shardpack.Loader(dataset, batch_size=7, seed=2, indices=reversed(want))
    got = [s.index for b in lo for s in b]
    assert sorted(got) == want
    lo2 = shardpack.Loader(dataset, batch_size=7, seed=2, indices=want)
    it = iter(lo2)
    head = [s.index for s in next(it)]
    st = lo2.state_dict()
    assert st["subset"].startswith("52:")
    again = shardpack.Loader(dataset, batch_size=5, seed=2, indices=want)
    again.load_state_dict(st)
    assert head + [s.index for b in again for s in b] == got
    with pytest.raises(shardpack.ShardpackError, match="subset"):
        shardpack.Loader(dataset, batch_size=7, seed=2).load_state_dict(st)
    with pytest.raises(shardpack.ShardpackValueError, match="out of range"):
        shardpack.Loader(dataset, batch_size=7, indices=[N])
