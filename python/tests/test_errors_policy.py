"""The Loader's bad-record policy from Python: on_error="fail" | "skip", the skipped-sample
report (`Loader.skipped`), positions and resume under "skip", and the same through
`shardpack.torch.ShardIterableDataset`'s loader options.

The damaged dataset is the frozen fixture fixtures/corrupt/flipped-record-bit (see its
README): 30 samples in 3 shards; global sample 18 (key b"square/0010") has one flipped bit
in its raw `bin` record, so its checksum fails; every other record is intact."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import shardpack
from conftest import REPO

FLIPPED = REPO / "fixtures" / "corrupt" / "flipped-record-bit"
INTACT = REPO / "fixtures" / "corrupt" / "intact"
BAD, BAD_KEY, N = 18, b"square/0010", 30


def indices(loader: shardpack.Loader) -> list[int]:
    return [s.index for batch in loader for s in batch]


def test_the_fixture_is_what_the_tests_assume() -> None:
    ds = shardpack.open(FLIPPED)
    assert len(ds) == N and ds[BAD].key == BAD_KEY
    with pytest.raises(shardpack.CorruptError, match="checksum"):
        ds[BAD]["bin"]
    assert len(shardpack.open(INTACT)) == N


def test_fail_raises_naming_the_shard_sample_key_and_field() -> None:
    loader = shardpack.Loader(FLIPPED, batch_size=4, shuffle="none")
    with pytest.raises(shardpack.CorruptError) as e:
        for _ in loader:
            pass
    msg = str(e.value)
    for part in ("shard-000001.spk", "sample 6", "square/0010", '"bin"', "checksum"):
        assert part in msg, (part, msg)
    assert loader.skipped == []


@pytest.mark.parametrize("shuffle", ["none", "chunked", "full"])
def test_skip_leaves_out_only_the_bad_sample_and_reports_it(shuffle: str) -> None:
    loader = shardpack.Loader(FLIPPED, batch_size=4, shuffle=shuffle, seed=3, on_error="skip")
    got = indices(loader)
    assert sorted(got) == [i for i in range(N) if i != BAD]
    [s] = loader.skipped
    assert s["index"] == BAD and s["key"] == BAD_KEY
    assert "shard-000001.spk" in s["reason"] and "checksum" in s["reason"], s
    # Its position in the epoch's order: the planned order lists every sample.
    planned = indices(shardpack.Loader(INTACT, batch_size=4, shuffle=shuffle, seed=3))
    assert planned[s["position"]] == BAD
    # Positions count the skipped sample: the epoch is at its end, not one short.
    assert loader.state_dict()["samples_consumed"] == N
    json.dumps(loader.skipped, default=bytes.hex)  # plain data


def test_skip_batches_stay_full_and_the_epoch_restarts_cleanly() -> None:
    loader = shardpack.Loader(FLIPPED, batch_size=4, shuffle="none", on_error="skip")
    sizes = [len(b) for b in loader]
    assert sizes == [4] * 7 + [1]  # 29 samples: the gap is filled from the next samples
    assert sorted(indices(loader)) == [i for i in range(N) if i != BAD]  # the epoch again
    assert [s["index"] for s in loader.skipped] == [BAD, BAD]  # met once per pass


def test_skip_resume_continues_exactly_after_the_skipped_sample(tmp_path: Path) -> None:
    """Stops right after the batch that skipped sample 18, saves the state, resumes in a new
    process: the rest of the epoch, with no sample repeated (positions count the skipped
    one) and none lost."""
    loader = shardpack.Loader(FLIPPED, batch_size=4, shuffle="none", on_error="skip")
    seen: list[int] = []
    for batch in loader:
        seen += [s.index for s in batch]
        if loader.skipped:
            break
    state = loader.state_dict()
    assert state["samples_consumed"] == len(seen) + 1
    code = textwrap.dedent(
        """
        import json, sys, shardpack
        loader = shardpack.Loader(sys.argv[1], batch_size=4, shuffle="none", on_error="skip")
        loader.load_state_dict(json.loads(sys.argv[2]))
        print(json.dumps([s.index for b in loader for s in b]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(FLIPPED), json.dumps(state)],
        check=True, capture_output=True, text=True,
    ).stdout
    rest = json.loads(out)
    assert seen + rest == [i for i in range(N) if i != BAD]


def test_skip_with_ranks_every_good_sample_once() -> None:
    got: list[int] = []
    for rank in range(3):
        loader = shardpack.Loader(
            FLIPPED, batch_size=4, seed=1, rank=rank, world_size=3, on_error="skip"
        )
        got += indices(loader)
        assert [s["index"] for s in loader.skipped] in ([], [BAD])
    assert sorted(got) == [i for i in range(N) if i != BAD]  # 30 = 3 x 10: no padding


def test_bad_policy_is_a_value_error() -> None:
    for bad in ("ignore", "", "SKIP"):
        with pytest.raises(ValueError, match="on_error"):
            shardpack.Loader(FLIPPED, batch_size=4, on_error=bad)


def test_torch_dataset_passes_the_policy_through() -> None:
    tud = pytest.importorskip("torch.utils.data")
    from shardpack.torch import ShardIterableDataset, collate_samples

    ds = ShardIterableDataset(FLIPPED, seed=0, on_error="skip", batch_size=4)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = [s.index for b in tud.DataLoader(ds, batch_size=5, collate_fn=collate_samples)
               for s in b]
    assert sorted(got) == [i for i in range(N) if i != BAD]
    assert [s["index"] for s in ds.skipped] == [BAD]
    assert any("skipped sample 18" in str(x.message) for x in w), [str(x.message) for x in w]
    # The default still fails, naming the record.
    strict = ShardIterableDataset(FLIPPED, seed=0, batch_size=4)
    with pytest.raises(shardpack.CorruptError, match="square/0010"):
        for _ in tud.DataLoader(strict, batch_size=5, collate_fn=collate_samples):
            pass


def test_torch_dataset_skip_with_workers() -> None:
    tud = pytest.importorskip("torch.utils.data")
    from shardpack.torch import ShardIterableDataset, collate_samples

    ds = ShardIterableDataset(FLIPPED, seed=0, on_error="skip", batch_size=4, drop_last=True)
    dl = tud.DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate_samples)
    got = [s.index for b in dl for s in b]
    # drop_last: 2 partitions of 15 distinct samples; the bad one is in one of them.
    assert len(got) == N - 1 and BAD not in got and len(set(got)) == len(got)
