"""Back-to-back epochs (read_next_epoch), the interleaved default order and old-default
states from Python."""

from __future__ import annotations

from pathlib import Path

import pytest

import shardpack


def _indices(loader: shardpack.Loader) -> list[int]:
    return [s.index for batch in loader for s in batch]


@pytest.mark.parametrize("drop_last", [False, True])
def test_read_next_epoch_hands_over_the_next_epoch_read_ahead(dataset: Path, drop_last: bool) -> None:
    kw = dict(batch_size=7, seed=3, chunk_bytes=4096, window_chunks=2, io_threads=2, drop_last=drop_last)
    lo = shardpack.Loader(dataset, read_next_epoch=True, **kw)
    assert lo.options["read_next_epoch"] is True
    for epoch in range(3):
        lo.set_epoch(epoch)
        got = _indices(lo)
        want = _indices(shardpack.Loader(dataset, epoch=epoch, **kw))
        assert got == want, epoch
        # The epoch is done: the next one is waiting, already reading.
        assert lo.next_epoch_ready
    # A start that is not the next epoch's start drops it and reads afresh.
    lo.set_epoch(0)
    assert _indices(lo) == _indices(shardpack.Loader(dataset, epoch=0, **kw))
    lo.close()
    assert not lo.next_epoch_ready
    # Off by default: nothing read ahead.
    off = shardpack.Loader(dataset, **kw)
    _indices(off)
    assert not off.next_epoch_ready


def test_interleaved_is_the_default_and_chunked_states_resume_with_their_options(dataset: Path) -> None:
    lo = shardpack.Loader(dataset, batch_size=8, seed=1)
    assert lo.options["shuffle"] == "interleaved"
    assert lo.options["chunk_bytes"] == 256 << 10 and lo.options["window_chunks"] == 256
    st = lo.state_dict()
    assert st["shuffle"] == "interleaved"
    old = shardpack.Loader(dataset, batch_size=8, seed=1, shuffle="chunked", chunk_bytes=4 << 20, window_chunks=16)
    next(iter(old))
    saved = old.state_dict()
    assert saved["shuffle"] == "chunked"
    with pytest.raises(shardpack.ShardpackError, match="shuffle=chunked.*shuffle=interleaved"):
        shardpack.Loader(dataset, batch_size=8, seed=1).load_state_dict(saved)
    again = shardpack.Loader(dataset, batch_size=8, seed=1, shuffle="chunked", chunk_bytes=4 << 20, window_chunks=16)
    again.load_state_dict(saved)
    rest = _indices(again)
    assert sorted(rest + [s.index for s in next(iter(shardpack.Loader(
        dataset, batch_size=8, seed=1, shuffle="chunked", chunk_bytes=4 << 20, window_chunks=16)))]) == list(range(len(lo.dataset)))
