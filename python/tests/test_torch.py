"""shardpack.torch: DataLoader under fork/spawn/forkserver with 0 and 2 workers, two-process
DDP over gloo on loopback, StatefulDataLoader resume in a new process, ShardMapDataset."""

from __future__ import annotations

import collections
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (scripts/python-env.sh installs it)")
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

import shardpack  # noqa: E402
from shardpack.torch import ShardIterableDataset, ShardMapDataset, collate_samples  # noqa: E402

N = 121
HERE = Path(__file__).resolve().parent


def index_of(sample: shardpack.Sample) -> int:
    return sample.index


def epoch_indices(dl: DataLoader) -> list[int]:
    return [i for batch in dl for i in batch]


@pytest.mark.parametrize(("workers", "method"), [(0, None), (2, "fork"), (2, "spawn"), (2, "forkserver")])
def test_dataloader_every_sample_once(dataset: Path, workers: int, method: str | None) -> None:
    ctx = torch.multiprocessing.get_context(method) if method else None
    # Each DataLoader epoch starts new workers; under spawn/forkserver each imports torch
    # (seconds on a busy machine), so those run two epochs rather than four.
    cases = [(False, 0), (False, 1), (True, 0), (True, 1)]
    if method in ("spawn", "forkserver"):
        cases = [(False, 0), (True, 1)]
    parts = max(workers, 1)
    for drop_last, epoch in cases:
        ds = ShardIterableDataset(dataset, transform=index_of, seed=1, drop_last=drop_last)
        dl = DataLoader(ds, batch_size=16, num_workers=workers, multiprocessing_context=ctx,
                        collate_fn=collate_samples)
        ds.set_epoch(epoch)
        got = epoch_indices(dl)
        c = collections.Counter(got)
        if drop_last:
            assert len(got) == parts * (N // parts)
            assert max(c.values()) == 1
        else:
            assert len(got) == parts * math.ceil(N / parts)
            assert set(c) == set(range(N))
            assert sum(v - 1 for v in c.values()) == len(got) - N  # the documented padding


def test_epochs_differ_and_repeat(dataset: Path) -> None:
    ds = ShardIterableDataset(dataset, transform=index_of, seed=1)
    e0 = list(ds)
    ds.set_epoch(1)
    e1 = list(ds)
    ds.set_epoch(0)
    assert sorted(e0) == sorted(e1) == list(range(N)) and e0 != e1 and list(ds) == e0


def test_samples_cross_worker_processes(dataset: Path) -> None:
    ref = shardpack.open(dataset)
    ds = ShardIterableDataset(dataset, seed=2)
    dl = DataLoader(ds, batch_size=32, num_workers=2, collate_fn=collate_samples,
                    multiprocessing_context=torch.multiprocessing.get_context("spawn"))
    seen = 0
    for batch in dl:
        for s in batch:
            assert bytes(s["bin"]) == bytes(ref[s.index]["bin"])
            seen += 1
    assert seen == 2 * math.ceil(N / 2)


def test_map_dataset_with_distributed_sampler(dataset: Path) -> None:
    got = []
    for rank in range(2):
        ds = ShardMapDataset(dataset, transform=index_of)
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        dl = DataLoader(ds, batch_size=10, sampler=sampler, num_workers=2,
                        multiprocessing_context=torch.multiprocessing.get_context("forkserver"),
                        collate_fn=collate_samples)
        got.append(epoch_indices(dl))
    assert len(got[0]) == len(got[1]) == 61
    assert set(got[0]) | set(got[1]) == set(range(N))
    assert len(ShardMapDataset(dataset)) == N


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist
    from torch.utils.data import DataLoader
    from operator import attrgetter
    from shardpack.torch import ShardIterableDataset, collate_samples
    index_of = attrgetter("index")  # picklable for spawned workers
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2],
                            rank=int(sys.argv[3]), world_size=2)
    ds = ShardIterableDataset(sys.argv[1], transform=index_of, seed=4)
    # Spawned workers have no process group: the dataset carries the rank it was pickled with.
    dl = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate_samples,
                    multiprocessing_context="spawn", persistent_workers=False)
    out = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        idx = [i for b in dl for i in b]
        # An all-reduce per step: it hangs if one rank has more steps than the other.
        steps = 0
        for b in range(0, len(idx), 8):
            t = torch.ones(1)
            dist.all_reduce(t)
            steps += 1
        out.append(idx)
    dist.barrier()
    dist.destroy_process_group()
    print(json.dumps(out))
    """
)


def test_two_process_ddp_gloo(dataset: Path) -> None:
    port = str(free_port())
    env = dict(os.environ)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    procs = [
        subprocess.Popen([sys.executable, "-c", DDP, str(dataset), port, str(r)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for r in range(2)
    ]
    outs = []
    for p in procs:
        o, e = p.communicate(timeout=240)
        assert p.returncode == 0, e
        outs.append(json.loads(o))
    for epoch in range(2):
        a, b = outs[0][epoch], outs[1][epoch]
        per = 2 * math.ceil(N / 4)  # 2 workers per rank: 4 partitions
        assert len(a) == len(b) == per
        c = collections.Counter(a + b)
        assert set(c) == set(range(N))
        assert sum(v - 1 for v in c.values()) == 2 * per - N  # the documented padding only
    assert outs[0][0] != outs[0][1]  # set_epoch changes the order


RESUME = textwrap.dedent(
    """
    import json, sys
    import torch
    from torchdata.stateful_dataloader import StatefulDataLoader
    from shardpack.torch import ShardIterableDataset, collate_samples
    def index_of(s):
        return s.index
    path, mode, state_file, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ds = ShardIterableDataset(path, transform=index_of, seed=8)
    ds.set_epoch(3)
    dl = StatefulDataLoader(ds, batch_size=5, num_workers=workers, collate_fn=collate_samples)
    got = []
    if mode == "first":
        for k, b in enumerate(dl):
            got += b
            if k == 6:
                break
        json.dump(dl.state_dict(), open(state_file, "w"))
    else:
        dl.load_state_dict(json.load(open(state_file)))
        for b in dl:
            got += b
    print(json.dumps(got))
    """
)


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_resume_in_new_process(dataset: Path, tmp_path: Path, workers: int) -> None:
    pytest.importorskip("torchdata.stateful_dataloader", reason="torchdata is not installed")
    state = tmp_path / "state.json"

    def run(mode: str) -> list[int]:
        out = subprocess.run(
            [sys.executable, "-c", RESUME, str(dataset), mode, str(state), str(workers)],
            capture_output=True, text=True, timeout=240,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    head = run("first")
    assert len(head) == 35
    rest = run("rest")
    ds = ShardIterableDataset(dataset, transform=index_of, seed=8)
    ds.set_epoch(3)
    full = collections.Counter(epoch_indices(DataLoader(ds, batch_size=5, num_workers=workers,
                                                        collate_fn=collate_samples)))
    assert collections.Counter(head + rest) == full


def test_dataset_state_refused_for_other_options(dataset: Path) -> None:
    ds = ShardIterableDataset(dataset, seed=1)
    st = ds.state_dict()
    json.dumps(st)
    with pytest.raises(shardpack.ShardpackError, match="seed"):
        ShardIterableDataset(dataset, seed=2).load_state_dict(st)
    with pytest.raises(shardpack.ShardpackError, match="drop_last"):
        ShardIterableDataset(dataset, seed=1, drop_last=True).load_state_dict(st)
    golden = HERE.parents[1] / "fixtures" / "golden-v1"
    with pytest.raises(shardpack.ShardpackError, match="another dataset"):
        ShardIterableDataset(golden, seed=1).load_state_dict(st)
