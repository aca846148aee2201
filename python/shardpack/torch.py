"""PyTorch datasets over shardpack (``import shardpack.torch`` imports torch; ``import
shardpack`` does not).

- :class:`ShardIterableDataset`: a ``torch.utils.data.IterableDataset`` reading with the Rust
  loader (large sequential reads on background threads). It splits the epoch by rank and by
  DataLoader worker without overlap, gives every rank the same number of samples, and its
  ``state_dict()`` / ``load_state_dict()`` follow torchdata's ``StatefulDataLoader`` protocol.
- :class:`ShardMapDataset`: a map-style ``torch.utils.data.Dataset`` (``len``, ``ds[i]``) for
  ``DistributedSampler`` and other samplers.

Both pickle as their path and options (never as open handles), so DataLoader workers work
under the ``fork``, ``spawn`` and ``forkserver`` start methods; each process opens the dataset
itself. Samples sent from a worker process to the main process are pickled as copies of their
bytes; return tensors or numpy arrays from ``transform`` to decide what crosses.

Batching: samples are not tensors, so give the DataLoader ``collate_fn=collate_samples`` (a
list per batch) or a ``transform`` that returns tensors.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Iterator, Mapping

try:
    import torch
    import torch.utils.data as tud
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "shardpack.torch needs PyTorch (pip install torch); the rest of shardpack works "
        "without it"
    ) from e

from . import Loader, ShardpackError, _distributed_defaults, _native

_Blob = _native.Blob
from ._pickle import open_cached

__all__ = ["ShardIterableDataset", "ShardMapDataset", "collate_samples"]

_STATE_VERSION = 1


def collate_samples(batch: list[Any]) -> list[Any]:
    """A DataLoader ``collate_fn`` that keeps a batch as the list of its samples."""
    return list(batch)


def _worker() -> tuple[int, int]:
    info = tud.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class ShardIterableDataset(tud.IterableDataset):  # type: ignore[type-arg]
    """Samples of a shardpack dataset in the Rust loader's shuffled, partitioned order.

    ``ShardIterableDataset(path, *, transform=None, shuffle=True, seed=0, drop_last=False,
    **loader_options)``

    Each (rank, DataLoader worker) pair is one partition of the epoch: with ``R`` ranks and
    ``K`` workers per rank there are ``P = R * K`` partitions, partition ``rank * K + worker``.
    Partitions never overlap except for the documented padding:

    - ``drop_last=False`` (default): every partition gets ``ceil(N / P)`` samples; the last
      partitions are padded by repeating the first samples of the epoch's order (at most
      ``P - 1`` repeats per epoch), so every rank yields ``K * ceil(N / P)`` samples and DDP
      never waits at the last all-reduce.
    - ``drop_last=True``: every partition gets ``floor(N / P)`` samples, disjoint, no repeats;
      the last ``N mod P`` samples of the epoch's order are not seen that epoch (a different
      set each epoch).

    Every rank must use the same ``num_workers`` for counts to be equal. ``rank`` and
    ``world_size`` come from ``torch.distributed`` when it is initialised (else ``RANK`` /
    ``WORLD_SIZE``, else 0 / 1), looked up when iteration starts, or when the dataset is pickled
    for a spawned worker (which has no process group of its own); they may be given in
    ``loader_options``.

    ``shuffle=False`` gives stored order (split the same way). ``transform(sample)`` is
    applied to each :class:`shardpack.Sample` in the worker (in a DataLoader worker process a
    :class:`shardpack.Blob` it returns is copied to ``bytes`` at once: it would be pickled as
    ``bytes`` anyway, and the copy frees the loader's read buffer for reuse).
    ``loader_options``:
    ``batch_size`` (samples taken from the Rust loader per call, default 64; unrelated to the
    DataLoader's), ``rank``, ``world_size``, and the Loader's tuning options
    (``chunk_bytes``, ``window_chunks``, ``io_threads``, ``prefetch_bytes``, ``direct_io``,
    ``on_error``). ``io_threads`` defaults to 8 divided by the number of workers (at least 2).

    ``on_error="skip"`` leaves out a sample whose record is damaged instead of raising: each
    one is appended to :attr:`skipped` (the dicts of :attr:`shardpack.Loader.skipped`) of the
    process that read it and reported with ``warnings.warn`` (a DataLoader worker's warning
    reaches the main process's stderr); that partition then yields one sample fewer.

    ``set_epoch(e)`` selects epoch ``e``'s order (call it before each epoch, before the
    DataLoader's iterator is created; with ``persistent_workers=True`` workers keep the epoch
    they started with). ``state_dict()`` / ``load_state_dict()`` save and restore the position
    of one partition; torchdata's ``StatefulDataLoader`` calls them in each worker, so a
    resumed DataLoader yields exactly the samples the interrupted one had not yet yielded.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        transform: Callable[[Any], Any] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        **loader_options: Any,
    ) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.transform = transform
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.drop_last = bool(drop_last)
        self.loader_options = dict(loader_options)
        self.epoch = 0
        #: Samples left out under ``on_error="skip"`` by iterations in this process.
        self.skipped: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None
        self._yielded = 0
        self._partition: tuple[int, int] | None = None
        # (rank, world size) as the process that pickled this dataset saw them: spawned
        # DataLoader workers have no process group of their own.
        self._dist: tuple[int, int] | None = None
        # Opens the dataset once here to fail early on a bad path; workers reopen it.
        self._len = len(open_cached(self.path))

    # -- partitions -------------------------------------------------------------------------

    def _partition_now(self) -> tuple[int, int, int]:
        """(partition, partitions, workers per rank) for the calling process."""
        o = self.loader_options
        if self._dist is not None:
            rank, world = self._dist
        else:
            rank, world = _distributed_defaults(o.get("rank"), o.get("world_size"))
        wid, nw = _worker()
        return rank * nw + wid, world * nw, nw

    def _counts(self, parts: int) -> int:
        return self._len // parts if self.drop_last else -(-self._len // parts)

    def __len__(self) -> int:
        """Samples per epoch of the calling process's partition: in the main process (no
        worker) ``ceil(N / R)`` (``floor`` with ``drop_last``), in a DataLoader worker that
        worker's share. With ``K`` workers a rank yields ``K * ceil(N / (R * K))``, which can
        exceed ``ceil(N / R)`` by up to ``K - 1`` padding samples."""
        _, parts, _ = self._partition_now()
        return self._counts(parts)

    def set_epoch(self, epoch: int) -> None:
        """Selects epoch ``epoch``'s order for the next iteration."""
        self.epoch = int(epoch)
        self._pending = None

    def _loader(self, part: int, parts: int, nw: int) -> Loader:
        o = dict(self.loader_options)
        o.pop("rank", None)
        o.pop("world_size", None)
        batch_size = o.pop("batch_size", 64)
        o.setdefault("io_threads", max(2, 8 // nw))
        ds = open_cached(self.path)
        common = dict(
            batch_size=batch_size,
            seed=self.seed,
            epoch=self.epoch,
            shuffle="interleaved" if self.shuffle else "none",
            **o,
        )
        if self.drop_last:
            # One epoch order over the whole dataset; partition p takes positions
            # [p*m, (p+1)*m): disjoint, equal, no padding.
            return Loader(ds, rank=0, world_size=1, **common)
        return Loader(ds, rank=part, world_size=parts, **common)

    def _range(self, part: int, parts: int) -> tuple[int, int]:
        """The epoch positions the partition reads in its loader's order."""
        if self.drop_last:
            m = self._len // parts
            return part * m, (part + 1) * m
        return 0, -(-self._len // parts)

    def __iter__(self) -> Iterator[Any]:
        part, parts, nw = self._partition_now()
        start, end = self._range(part, parts)
        skip = 0
        if self._pending is not None:
            st = self._pending
            self._pending = None
            if (st["partition"], st["partitions"]) != (part, parts):
                raise ShardpackError(
                    f"the dataset state is for partition {st['partition']} of "
                    f"{st['partitions']} but this worker is partition {part} of {parts}; "
                    "resume with the same world size and number of DataLoader workers"
                )
            self.epoch = st["epoch"]
            skip = st["samples_yielded"]
        loader = self._loader(part, parts, nw)
        loader._native.seek(self.epoch, start + skip, end)
        self._partition = (part, parts)
        self._yielded = skip
        transform = self.transform
        skip = self.loader_options.get("on_error") == "skip"
        # In a DataLoader worker every item is pickled (copied) to reach the main process, but
        # only when the DataLoader sends its batch: a Blob held until then keeps its read
        # buffer out of the loader's reuse, so the loader allocates fresh ones (slow: the
        # first touch of fresh memory). A Blob result is copied to bytes at once instead.
        in_worker = tud.get_worker_info() is not None
        seen = 0
        try:
            for batch in loader:
                if skip:
                    seen = self._note_skipped(loader, seen)
                if transform is None:
                    for s in batch:
                        self._yielded += 1
                        yield s
                elif in_worker:
                    for s in batch:
                        self._yielded += 1
                        out = transform(s)
                        yield bytes(out) if type(out) is _Blob else out
                else:
                    for s in batch:
                        self._yielded += 1
                        yield transform(s)
        finally:
            if skip:
                self._note_skipped(loader, seen)
            loader.close()

    def _note_skipped(self, loader: Loader, seen: int) -> int:
        new = loader.skipped[seen:]
        for s in new:
            warnings.warn(f"shardpack: skipped sample {s['index']}: {s['reason']}", stacklevel=2)
        self.skipped.extend(new)
        return seen + len(new)

    # -- state (torchdata StatefulDataLoader protocol) ---------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position of this process's partition: JSON-serialisable."""
        if self._partition is None:
            part, parts, _ = self._partition_now()
        else:
            part, parts = self._partition
        return {
            "shardpack_torch_state": _STATE_VERSION,
            "dataset": open_cached(self.path).fingerprint,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "epoch": self.epoch,
            "partition": part,
            "partitions": parts,
            "samples_yielded": self._yielded,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continues the next iteration from ``state`` (from :meth:`state_dict`). Refuses a
        state from another dataset or other order options."""
        if not isinstance(state, Mapping) or state.get("shardpack_torch_state") != _STATE_VERSION:
            raise ShardpackError(
                "not a ShardIterableDataset state (expected a dict from state_dict())"
            )
        fp = open_cached(self.path).fingerprint
        if state.get("dataset") != fp:
            raise ShardpackError(
                f"the dataset state is for another dataset (fingerprint {state.get('dataset')}, "
                f"this one is {fp})"
            )
        for k in ("seed", "shuffle", "drop_last"):
            if state.get(k) != getattr(self, k):
                raise ShardpackError(
                    f"the dataset state was saved with {k}={state.get(k)!r} but this dataset "
                    f"has {k}={getattr(self, k)!r}"
                )
        parts = state.get("partitions")
        y = state.get("samples_yielded")
        if not isinstance(parts, int) or parts < 1 or not isinstance(y, int):
            raise ShardpackError("the dataset state is malformed")
        if not 0 <= y <= self._counts(parts):
            raise ShardpackError(
                f"the dataset state's samples_yielded={y} is not in 0..={self._counts(parts)}"
            )
        self._pending = dict(state)
        self.epoch = int(state["epoch"])

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_partition"] = None
        if d["_dist"] is None:
            o = self.loader_options
            d["_dist"] = _distributed_defaults(o.get("rank"), o.get("world_size"))
        return d


class ShardMapDataset(tud.Dataset):  # type: ignore[type-arg]
    """Map-style access to a shardpack dataset: ``len(ds)``, ``ds[i]`` ->
    ``transform(sample)`` (or the :class:`shardpack.Sample`). For ``DistributedSampler`` and
    other samplers; each record is a small random read, so the iterable dataset is faster for
    whole epochs. Pickles as its path; each process opens the dataset once."""

    def __init__(
        self, path: str | os.PathLike[str], transform: Callable[[Any], Any] | None = None
    ) -> None:
        self.path = os.fspath(path)
        self.transform = transform
        self._len = len(open_cached(self.path))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> Any:
        if isinstance(i, torch.Tensor):
            i = int(i)
        s = open_cached(self.path)[i]
        return s if self.transform is None else self.transform(s)


_ = _native  # the native module is loaded by `shardpack`; kept for type checkers
