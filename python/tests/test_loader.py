"""shardpack.Loader: epochs, partitions, state dicts and resume in a new process, fork,
pickling, options."""

from __future__ import annotations

import collections
import gc
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import shardpack

N = 121


def indices(loader: shardpack.Loader) -> list[int]:
    return [s.index for b in loader for s in b]


def test_every_sample_once_per_epoch(dataset: Path) -> None:
    loader = shardpack.Loader(dataset, batch_size=10, seed=3)
    assert len(loader) == 13
    batches = list(loader)
    assert [len(b) for b in batches] == [10] * 12 + [1]
    e0 = [s.index for b in batches for s in b]
    assert sorted(e0) == list(range(N))
    # Iterating again without set_epoch repeats the epoch; set_epoch changes the order.
    assert indices(loader) == e0
    loader.set_epoch(1)
    e1 = indices(loader)
    assert sorted(e1) == list(range(N)) and e1 != e0
    # The same seed and epoch give the same order in a new loader.
    assert indices(shardpack.Loader(dataset, batch_size=7, seed=3, epoch=1)) == e1


def test_fields_match_dataset(dataset: Path) -> None:
    ds = shardpack.open(dataset)
    for b in shardpack.Loader(ds, batch_size=32, seed=1):
        for s in b:
            ref = ds[s.index]
            assert s.key == ref.key and s.label == ref.label
            assert {k: bytes(v) for k, v in s.fields().items()} == {
                k: bytes(v) for k, v in ref.fields().items()
            }


def test_drop_last(dataset: Path) -> None:
    loader = shardpack.Loader(dataset, batch_size=10, drop_last=True)
    assert len(loader) == 12
    got = list(loader)
    assert len(got) == 12 and all(len(b) == 10 for b in got)


def test_ranks_equal_and_disjoint_except_padding(dataset: Path) -> None:
    per_rank = [indices(shardpack.Loader(dataset, batch_size=8, rank=r, world_size=4)) for r in range(4)]
    assert {len(x) for x in per_rank} == {31}  # ceil(121 / 4)
    c = collections.Counter(i for x in per_rank for i in x)
    assert set(c) == set(range(N))
    assert sum(v - 1 for v in c.values()) == 4 * 31 - N  # the documented padding


def test_rank_defaults_from_env(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert shardpack.Loader(dataset, batch_size=4).state_dict()["rank"] == 2
    assert shardpack.Loader(dataset, batch_size=4).state_dict()["world_size"] == 3
    assert shardpack.Loader(dataset, batch_size=4, rank=0).state_dict()["rank"] == 0
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    st = shardpack.Loader(dataset, batch_size=4).state_dict()
    assert (st["rank"], st["world_size"]) == (0, 1)


def test_state_dict_resume_in_a_new_process(dataset: Path, tmp_path: Path) -> None:
    loader = shardpack.Loader(dataset, batch_size=9, seed=5, epoch=2, rank=1, world_size=2)
    full = indices(shardpack.Loader(dataset, batch_size=9, seed=5, epoch=2, rank=1, world_size=2))
    it = iter(loader)
    head = [s.index for _ in range(3) for s in next(it)]
    state = loader.state_dict()
    (tmp_path / "state.json").write_text(json.dumps(state))
    code = textwrap.dedent(
        """
        import json, sys, shardpack
        loader = shardpack.Loader(sys.argv[1], batch_size=4, seed=5, rank=1, world_size=2)
        loader.load_state_dict(json.load(open(sys.argv[2])))
        print(json.dumps([s.index for b in loader for s in b]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(dataset), str(tmp_path / "state.json")],
        capture_output=True, text=True, check=True,
    )
    rest = json.loads(out.stdout)
    assert head + rest == full


def test_state_from_other_dataset_or_options_is_refused(dataset: Path, tmp_path: Path) -> None:
    state = shardpack.Loader(dataset, batch_size=8, seed=1).state_dict()
    # rank and world_size may change at resume (tests/test_loader_state.py).
    for kw in ({"seed": 2}, {"shuffle": "none"}, {"chunk_bytes": 1 << 16}, {"drop_last": True}):
        other = shardpack.Loader(dataset, batch_size=8, **{"seed": 1, **kw})
        with pytest.raises(shardpack.ShardpackError, match="saved with"):
            other.load_state_dict(state)
    golden = Path(__file__).resolve().parents[2] / "fixtures" / "golden-v1"
    with pytest.raises(shardpack.ShardpackError, match="another dataset"):
        shardpack.Loader(golden, batch_size=8, seed=1).load_state_dict(state)
    with pytest.raises(shardpack.ShardpackError):
        shardpack.Loader(dataset, batch_size=8, seed=1).load_state_dict({"x": 1})
    bad = dict(state, samples_consumed=10**6)
    with pytest.raises(shardpack.ShardpackError, match="samples_consumed"):
        shardpack.Loader(dataset, batch_size=8, seed=1).load_state_dict(bad)


def test_pickle_keeps_position(dataset: Path) -> None:
    loader = shardpack.Loader(dataset, batch_size=10, seed=9)
    full = indices(shardpack.Loader(dataset, batch_size=10, seed=9))
    it = iter(loader)
    head = [s.index for s in next(it)]
    clone = pickle.loads(pickle.dumps(loader))
    assert head + indices(clone) == full


def test_buffers_outlive_the_loader(dataset: Path) -> None:
    ds = shardpack.open(dataset)
    want = {i: bytes(ds[i]["bin"]) for i in range(N)}
    loader = shardpack.Loader(ds, batch_size=32, seed=4)
    kept = [(s.index, s["bin"], memoryview(s["bin"])) for s in next(iter(loader))]
    assert all(b.zero_copy for _, b, _ in kept)
    del loader, ds
    gc.collect()
    for i, b, mv in kept:
        assert bytes(b) == want[i] and bytes(mv) == want[i]


def test_use_after_fork_is_an_error_not_a_hang(dataset: Path) -> None:
    code = textwrap.dedent(
        """
        import os, sys, shardpack
        loader = shardpack.Loader(sys.argv[1], batch_size=8, prefetch_bytes=1 << 16)
        it = iter(loader)
        next(it)
        pid = os.fork()
        if pid == 0:
            try:
                next(it)
                os._exit(3)
            except RuntimeError as e:
                ok = "fork" in str(e)
            # Restarting in the child works.
            loader.set_epoch(0)
            n = sum(len(b) for b in loader)
            os._exit(0 if ok and n == 121 else 4)
        _, status = os.waitpid(pid, 0)
        # The parent's loader is unaffected.
        rest = sum(len(b) for b in it)
        print(os.waitstatus_to_exitcode(status), rest)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(dataset)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", str(N - 8)]


def test_bad_options(dataset: Path) -> None:
    for kw in (
        {"batch_size": 0},
        {"batch_size": 4, "shuffle": "sideways"},
        {"batch_size": 4, "rank": 2, "world_size": 2},
        {"batch_size": 4, "io_threads": 0},
        {"batch_size": 4, "direct_io": "maybe"},
        {"batch_size": 4, "chunk_bytes": "12 parsecs"},
        {"batch_size": 4, "bogus": 1},
    ):
        with pytest.raises(ValueError) as e:
            shardpack.Loader(dataset, **kw)
        assert isinstance(e.value, shardpack.ShardpackError), kw
    with pytest.raises(TypeError):
        shardpack.Loader(dataset)  # batch_size is required


def test_tuning_sizes_as_strings(dataset: Path) -> None:
    loader = shardpack.Loader(dataset, batch_size=16, chunk_bytes="64KiB", prefetch_bytes="1MiB", io_threads=2)
    assert loader.options["chunk_bytes"] == 65536
    assert sorted(indices(loader)) == list(range(N))


def test_ctrl_c_while_waiting_for_a_batch(tmp_path: Path) -> None:
    """SIGINT during an epoch raises KeyboardInterrupt promptly (the wait for a batch checks
    for signals every 100 ms) and the loader is usable afterwards."""
    src = tmp_path / "tree" / "c"
    src.mkdir(parents=True)
    rnd = os.urandom(1 << 20)
    for i in range(400):
        (src / f"{i:04d}.bin").write_bytes(rnd[i * 997 % 4096:][: 64 << 10] + i.to_bytes(4, "little"))
    shardpack.pack(tmp_path / "tree", tmp_path / "ds", compress="none")
    code = textwrap.dedent(
        """
        import os, signal, sys, threading, time, shardpack
        # As in test_pack.py: a background job starts with SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        ds = sys.argv[1]
        for f in os.listdir(ds):
            fd = os.open(os.path.join(ds, f), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        loader = shardpack.Loader(ds, batch_size=400, io_threads=1, chunk_bytes=1 << 16,
                                  prefetch_bytes=1 << 16, direct_io="on")
        t = threading.Timer(0.02, lambda: os.kill(os.getpid(), signal.SIGINT))
        start = time.perf_counter()
        t.start()
        try:
            for b in loader:
                pass
            t.cancel()
            t.join()
            print("finished")  # the machine read 26 MB before the signal: nothing to test
        except KeyboardInterrupt:
            took = time.perf_counter() - start
            loader.set_epoch(0)
            print("interrupted", took < 5, sum(len(b) for b in loader))
        """
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ds")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "finished":
        pytest.skip("the epoch was read before the signal arrived")
    assert out.stdout.split() == ["interrupted", "True", "400"]


def test_a_sub_range_stops_reading_at_its_end(dataset: Path) -> None:
    """shardpack.torch's drop_last partitions read positions [a, b) of an epoch: the loader
    hands out exactly those and stops its threads at b instead of reading ahead."""
    full = indices(shardpack.Loader(dataset, batch_size=7, seed=2))
    loader = shardpack.Loader(dataset, batch_size=7, seed=2)
    loader._native.seek(0, 30, 75)
    got = []
    while (b := loader._native.next_batch()) is not None:
        got += [s.index for s in b]
        if len(got) < 45:
            assert loader._native.running
    assert got == full[30:75]
    assert not loader._native.running
