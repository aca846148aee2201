"""shardpack: packed, indexed, memory-mappable shards for deep-learning datasets.

Read a dataset made by ``shardpack pack`` (or :func:`pack`)::

    import shardpack
    ds = shardpack.open("data/train.spk")
    s = ds[0]
    s.key, s.label, bytes(s["jpg"])

Load shuffled, partitioned, resumable batches with large sequential reads on Rust threads::

    loader = shardpack.Loader("data/train.spk", batch_size=256, seed=0)
    for epoch in range(10):
        loader.set_epoch(epoch)
        for batch in loader:            # a list of Sample
            ...

PyTorch glue lives in :mod:`shardpack.torch` (imported only when used; ``import shardpack``
never imports torch and starts no thread).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Iterator, Mapping, Sequence

from . import _native
from ._errors import CorruptError, ShardpackError, ShardpackIOError, ShardpackValueError

Dataset = _native.Dataset
Sample = _native.Sample
Blob = _native.Blob

__version__: str = _native._version()

__all__ = [
    "open",
    "pack",
    "Dataset",
    "Sample",
    "Blob",
    "Loader",
    "MixedLoader",
    "ShardpackError",
    "ShardpackIOError",
    "ShardpackValueError",
    "CorruptError",
    "__version__",
]


def open(  # noqa: A001 (the API name is fixed)
    path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit: int | None = None,
    mode: str | None = None,
) -> Dataset:
    """Opens the dataset in ``path`` (a directory holding ``manifest.json`` and shards), or at
    a URL: ``s3://bucket/prefix`` or ``http(s)://host/path`` (see the README's "Remote
    datasets"). For a URL, ``mode="cache"`` (the default) downloads each shard on first use
    into ``cache_dir`` (shared safely by DataLoader workers and ranks; least recently used
    shards evicted above ``cache_limit`` bytes) and ``mode="stream"`` reads records with
    ranged GETs, keeping only the indexes locally.

    Maps every shard and checks its header and footer (O(shards)), and each shard's index at
    open too when all indexes total at most 64 MiB (else on the shard's first use); records
    are read and checksum-verified when asked for. Raises ``ShardpackIOError`` (an
    ``OSError``) when the path does not exist or cannot be read, ``CorruptError`` for a
    damaged shard (at open, or for a large dataset's damaged index on first use of that
    shard) and ``ShardpackError`` for a bad manifest.
    """
    if cache_dir is not None or cache_limit is not None or mode is not None:
        return _native._open_remote(
            os.fspath(path),
            mode=mode or "cache",
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            cache_limit=cache_limit,
        )
    return _native.Dataset(path)


# ---------------------------------------------------------------------------------------------
# Option parsing shared by pack and Loader
# ---------------------------------------------------------------------------------------------

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}


def _size(name: str, v: int | str) -> int:
    """A byte size: an int, or a string like the CLI's (``512MiB``, ``1GiB``, ``2GB``)."""
    if isinstance(v, bool):
        raise ShardpackValueError(f"invalid option: {name} must be a size, not {v!r}")
    if isinstance(v, int):
        if v < 1:
            raise ShardpackValueError(f"invalid option: {name} must be at least 1, not {v}")
        return v
    if not isinstance(v, str):
        raise ShardpackValueError(
            f"invalid option: {name} must be an int or a size string, not {type(v).__name__}"
        )
    t = v.strip()
    i = 0
    while i < len(t) and (t[i].isdigit() or t[i] == "."):
        i += 1
    num, unit = t[:i], t[i:].strip().lower()
    if unit not in _UNITS:
        raise ShardpackValueError(
            f"invalid option: unknown size unit {unit!r} in {v!r} (use e.g. 512MiB, 1GiB, 2GB)"
        )
    try:
        n = float(num)
    except ValueError:
        raise ShardpackValueError(
            f"invalid option: {v!r} is not a size (use e.g. 512MiB, 1GiB, 2GB)"
        ) from None
    b = n * _UNITS[unit]
    if not (1 <= b < 2**64):
        raise ShardpackValueError(f"invalid option: size {v!r} is out of range")
    return int(b)


def _count(name: str, v: Any, *, minimum: int = 1, optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ShardpackValueError(f"invalid option: {name} must be an int, not {v!r}")
    if v < minimum:
        raise ShardpackValueError(f"invalid option: {name} must be at least {minimum}, not {v}")
    return v


# ---------------------------------------------------------------------------------------------
# pack
# ---------------------------------------------------------------------------------------------


def pack(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    shard_size: int | str = "1GiB",
    max_samples_per_shard: int | None = None,
    compress: str = "auto",
    field_compress: Mapping[str, str] | None = None,
    align: int | str = 8,
    shuffle_seed: int | None = None,
    no_shuffle: bool = False,
    threads: int | None = None,
    io_threads: int | None = None,
    labels: str = "imagefolder",
    key: str = "auto",
    follow_symlinks: bool = False,
    symlinks: str | None = None,
    max_skipped_share: float | str = 0.01,
    unlabeled: str = "allow",
    skip_errors: bool = False,
    force: bool = False,
    progress: Callable[[dict[str, Any]], Any] | None = None,
    key_column: str | None = None,
    label_column: str | None = None,
    field_columns: Sequence[str] | None = None,
    dict_trainer: str = "fastcover",
    refs: bool = True,
) -> dict[str, Any]:
    """Packs ``src`` into a new dataset ``out``; returns the summary dict.

    ``src`` is what ``shardpack pack`` takes as one input: a folder tree, WebDataset shards (a
    ``.tar``/``.tar.gz`` file or a folder of them), an MDS dataset folder, or Parquet files (a
    ``.parquet`` file or a folder of them). For MDS and Parquet, ``key_column`` names the column
    that gives each sample's key; for Parquet, ``label_column`` the column of its label (string
    labels become sorted class ids, integers are kept) and ``field_columns`` the binary or
    Hugging Face image columns that become fields (default: all of them); other scalar columns
    are kept as per-sample metadata (``format-spec/metadata.md``).

    ``out`` is a folder, or an object store URL ``s3://bucket/prefix`` (credentials and endpoint
    from the ``AWS_*`` environment), as for ``shardpack pack``: the dataset is packed in a
    staging folder under the temporary directory (it needs the dataset's size of free disk),
    then uploaded, the shards first (multipart uploads) and ``manifest.json`` last, so an
    interrupted upload never looks like a dataset; a ``manifest.json`` already there is refused
    before packing unless ``force`` (then it is deleted first, and after the upload the old
    shards the new manifest does not name). ``http(s)://`` URLs are read-only.

    The summary has the keys of ``shardpack pack --json``: ``out``, ``samples``, ``shards``,
    ``files``, ``input_bytes``, ``output_bytes``, ``ratio``, ``seconds``, ``files_per_s``,
    ``mb_per_s``, ``classes``, ``fields``, ``skipped`` (and ``upload`` for a URL).

    The keyword options mirror the CLI's flags (``shardpack pack --help``): ``shard_size``
    (bytes or ``"512MiB"``), ``max_samples_per_shard``, ``compress`` (``auto``, ``none``,
    ``zstd[:LEVEL]``, ``zstd-dict[:LEVEL]``), ``field_compress`` (``{"json": "zstd-dict"}``),
    ``align`` (a power of two from 8 to 1 MiB), ``shuffle_seed`` / ``no_shuffle``,
    ``threads``, ``io_threads``, ``labels`` (``imagefolder`` or ``none``), ``key``
    (``auto``, the default, ``first-dot``, ``last-dot`` or ``whole``), ``symlinks`` (``follow``, the default, ``skip`` or
    ``error``; ``follow_symlinks=True`` is the older spelling of ``symlinks="follow"``),
    ``max_skipped_share`` (a share from 0 to 1 or a string such as ``"1%"``: more skipped
    inputs than that fail the pack unless ``skip_errors``), ``unlabeled`` (``allow`` or
    ``error`` for files outside any class folder under ``imagefolder`` labels),
    ``skip_errors``, ``force``, ``dict_trainer`` (``fastcover``, the default, or ``zdict``:
    zstd's ``ZDICT_trainFromBuffer``, slower, which reproduces a dataset whose manifest names
    it in ``writer.dict_trainer``), ``refs`` (``pack --refs``: ``True``, the default, stores a
    file that resembles an earlier one of its field in the shard, such as a copy, compressed
    against it as codec zstd-ref; ``False`` writes what shardpack wrote before zstd-ref).
    The output is byte-identical to the CLI's for the same options.

    ``progress``, when given, is called about every 100 ms from the calling thread with a dict
    (``walked_files``, ``files_total``, ``bytes_total``, ``files_done``, ``bytes_done``,
    ``notes``: new messages since the last call). An exception it raises cancels the pack.

    The pack runs on Rust threads with the GIL released. Ctrl-C (``KeyboardInterrupt``) stops
    it cleanly: what it wrote is removed before the exception propagates, so nothing is left
    looking complete.
    """
    if shuffle_seed is not None and no_shuffle:
        raise ShardpackValueError("invalid option: shuffle_seed and no_shuffle conflict")
    if shuffle_seed is not None:
        _count("shuffle_seed", shuffle_seed, minimum=0)
    fc: list[tuple[str, str]] = []
    if field_compress is not None:
        if not isinstance(field_compress, Mapping):
            raise ShardpackValueError(
                "invalid option: field_compress is a dict of field name -> policy"
            )
        fc = [(str(k), str(v)) for k, v in field_compress.items()]
    if follow_symlinks and symlinks not in (None, "follow"):
        raise ShardpackValueError(
            f"invalid option: follow_symlinks=True conflicts with symlinks={symlinks!r}"
        )
    share = _share("max_skipped_share", max_skipped_share)
    if progress is not None and not callable(progress):
        raise ShardpackValueError("invalid option: progress must be callable")
    seed: int | None
    if no_shuffle:
        seed = None
    elif shuffle_seed is not None:
        seed = shuffle_seed
    else:
        seed = _DEFAULT_SHUFFLE_SEED
    result = _native._pack(
        src,
        out,
        shard_size=_size("shard_size", shard_size),
        max_samples_per_shard=_count("max_samples_per_shard", max_samples_per_shard, optional=True),
        compress=str(compress),
        field_compress=fc,
        align=_size("align", align),
        shuffle_seed=seed,
        threads=_count("threads", threads, optional=True) or 0,
        io_threads=_count("io_threads", io_threads, optional=True) or 0,
        labels=str(labels),
        key=str(key),
        symlinks=str(symlinks or "follow"),
        max_skipped_share=share,
        unlabeled=str(unlabeled),
        skip_errors=bool(skip_errors),
        force=bool(force),
        progress=progress,
        key_column=None if key_column is None else str(key_column),
        label_column=None if label_column is None else str(label_column),
        field_columns=_columns(field_columns),
        dict_trainer=str(dict_trainer),
        refs=bool(refs),
    )
    summary: dict[str, Any] = json.loads(result)
    return summary


def _columns(cols: Sequence[str] | None) -> list[str]:
    """``field_columns`` as a list of names (a lone string is one name, not its letters)."""
    if cols is None:
        return []
    if isinstance(cols, str):
        return [cols]
    return [str(c) for c in cols]


# The library's compile::DEFAULT_SHUFFLE_SEED ("SHRDPACK"): the CLI's seed when none is given.
_DEFAULT_SHUFFLE_SEED = 0x5348_5244_5041_434B

# ---------------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------------

# LoaderOptions::default() in the library.
def _share(name: str, value: float | str) -> float:
    """A share from 0 to 1, given as a number or as a percentage string (``"1%"``)."""
    try:
        if isinstance(value, str) and value.strip().endswith("%"):
            share = float(value.strip()[:-1]) / 100.0
        elif isinstance(value, bool):
            raise TypeError
        else:
            share = float(value)
    except (TypeError, ValueError):
        raise ShardpackValueError(
            f"invalid option: {name} must be a share from 0 to 1 or a percentage such as "
            f"'1%', not {value!r}"
        ) from None
    if not 0.0 <= share <= 1.0:
        raise ShardpackValueError(
            f"invalid option: {name} must be from 0 to 1 (0% to 100%), not {value!r}"
        )
    return share


_TUNING_DEFAULTS: dict[str, Any] = {
    "chunk_bytes": 256 << 10,
    "window_chunks": 256,
    "io_threads": None,  # automatic: the library's 0 (8; 32 on a dataset streamed from a URL)
    "prefetch_bytes": 256 << 20,
    "direct_io": "auto",
    "on_error": "fail",
    "read_next_epoch": False,
}

# The state dict's "shardpack_loader_state": 1 in shardpack 0.2.0 (refused), 2 since the
# dict carries the library's LoaderState.
_STATE_VERSION = 2


def _distributed_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """rank/world size: the arguments, else torch.distributed when initialised, else the
    RANK/WORLD_SIZE environment variables, else 0/1. torch is never imported here: it is
    consulted only when the program already imported it."""
    if rank is not None and world_size is not None:
        return rank, world_size
    d_rank = d_world = None
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None) if torch is not None else None
    if dist is not None and dist.is_available() and dist.is_initialized():
        d_rank, d_world = dist.get_rank(), dist.get_world_size()
    elif "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        try:
            d_rank = int(os.environ.get("RANK", "0"))
            d_world = int(os.environ.get("WORLD_SIZE", "1"))
        except ValueError:
            raise ShardpackValueError(
                "invalid option: the RANK and WORLD_SIZE environment variables must be "
                f"integers (RANK={os.environ.get('RANK')!r}, "
                f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r})"
            ) from None
    else:
        d_rank, d_world = 0, 1
    return (d_rank if rank is None else rank), (d_world if world_size is None else world_size)


class Loader:
    """Shuffled, partitioned, resumable batches of a dataset, read on Rust threads.

    ``Loader(path_or_dataset, *, batch_size, seed=0, epoch=0, rank=None, world_size=None,
    shuffle="interleaved", drop_last=False, **tuning)``

    Iterating gives batches: lists of :class:`Sample` (raw fields are zero-copy views of the
    loader's read buffers; drop a batch when done with it, or copy with ``bytes(...)`` what
    must be kept). An epoch's order is a pure function of ``(seed, epoch, rank,
    world_size)``: chunks of consecutive samples are shuffled, each rank takes an equal slice
    (the last ranks are padded by repeating the first samples of the epoch's sequence, so every
    rank has ``ceil(len(ds) / world_size)`` samples; ``floor`` and no repeats with
    ``drop_last``), and samples are mixed within windows of chunks.

    - ``rank`` / ``world_size`` default to ``torch.distributed``'s when it is initialised,
      else to the ``RANK`` / ``WORLD_SIZE`` environment variables, else to 0 / 1.
    - ``shuffle``: ``"interleaved"`` (default: each chunk's samples spread evenly over its
      window, so a batch draws from up to ``window_chunks`` chunks and mixes labels like a
      full shuffle even on class-sorted storage), ``"chunked"`` (windows shuffled uniformly:
      the default before, and what states saying ``"chunked"`` resume with), ``"none"``
      (stored order) or ``"full"``.
    - ``indices``: serve only these sample numbers (any iterable; duplicates count once), in
      the same chunked order restricted to them; dense runs keep large reads, sparse members
      are read alone. The state records the set's identity.
    - ``drop_last``: equal counts per rank by dropping instead of padding (the library's
      ``LoaderOptions::drop_last``: every rank gets ``floor(len(ds) / world_size)`` distinct
      samples), and this rank's last batch is dropped when it is short.
    - ``**tuning``: ``chunk_bytes`` (256 KiB), ``window_chunks`` (256), ``io_threads`` (automatic: 8, or 32 on a dataset streamed from a URL),
      ``prefetch_bytes`` (256 MiB), ``direct_io`` (``"auto"``, ``"on"``, ``"off"``),
      ``on_error`` (``"fail"``, the default, raises on a corrupt record naming its shard,
      sample, key and field; ``"skip"`` leaves out only that sample, lists it in
      :attr:`skipped` and goes on), ``read_next_epoch`` (``False``; ``True``: once an epoch's
      reads are all under way, the next epoch's loader starts reading its first window, and
      ``set_epoch(epoch + 1)`` after the epoch's last batch takes it over, so that back to
      back epochs do not stall at the boundary); sizes may be ints or strings such as
      ``"8MiB"``.

    Under ``on_error="skip"`` positions (``state_dict()``'s ``samples_consumed``) count the
    skipped samples too, so a resume continues exactly where the loader stopped; a rank that
    skips ``k`` samples hands out ``k`` fewer that epoch (ranks of a DDP job that must take
    equal step counts should keep ``"fail"``).

    ``len(loader)`` is the number of batches per epoch (after ``load_state_dict`` of a state
    saved at another world size: in the rest of the epoch). ``for batch in loader`` continues the
    current epoch from where it stands and, once the epoch is done, starts it again: call
    ``set_epoch(e)`` for a new order. ``state_dict()`` returns a small JSON-serialisable dict
    and ``load_state_dict(d)`` continues exactly after the last batch handed out (even in
    another process, and at another world size: the rest of the epoch is split again over the
    new ranks); a state from another dataset or other order options is refused.

    Nothing starts at construction: the reading threads (and one thread that assembles the
    next batch while Python works on the current one) start at the first batch; waiting for a
    batch releases the GIL and checks for Ctrl-C every 100 ms. A loader is tied to the
    process that started its threads: used after ``os.fork()`` it raises ``RuntimeError``
    (call ``set_epoch`` or ``load_state_dict`` in the child to start it again). Loaders pickle
    as ``(path, options, state)``, so they can be sent to spawned processes.
    """

    def __init__(
        self,
        path_or_dataset: str | os.PathLike[str] | Dataset,
        *,
        batch_size: int,
        seed: int = 0,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: str = "interleaved",
        drop_last: bool = False,
        indices: Any = None,
        **tuning: Any,
    ) -> None:
        unknown = sorted(set(tuning) - set(_TUNING_DEFAULTS))
        if unknown:
            raise ShardpackValueError(
                f"invalid option: unknown Loader option(s) {', '.join(unknown)}; "
                f"the tuning options are {', '.join(_TUNING_DEFAULTS)}"
            )
        t = {**_TUNING_DEFAULTS, **tuning}
        rank, world_size = _distributed_defaults(rank, world_size)
        _count("batch_size", batch_size)
        _count("seed", seed, minimum=0)
        _count("epoch", epoch, minimum=0)
        _count("rank", rank, minimum=0)
        _count("world_size", world_size)
        if isinstance(path_or_dataset, _native.Dataset):
            ds = path_or_dataset
        else:
            ds = _native.Dataset(path_or_dataset)
        self._ds = ds
        self._options: dict[str, Any] = {
            "batch_size": batch_size,
            "seed": seed,
            "rank": rank,
            "world_size": world_size,
            "shuffle": str(shuffle),
            "drop_last": bool(drop_last),
            "chunk_bytes": _size("chunk_bytes", t["chunk_bytes"]),
            "window_chunks": _count("window_chunks", t["window_chunks"]),
            # None: automatic (the library's 0).
            "io_threads": _count("io_threads", t["io_threads"], optional=True),
            "prefetch_bytes": _size("prefetch_bytes", t["prefetch_bytes"]),
            "direct_io": str(t["direct_io"]),
            "on_error": str(t["on_error"]),
            "read_next_epoch": bool(t["read_next_epoch"]),
        }
        if indices is not None:
            try:
                subset = sorted({int(i) for i in indices})
            except (TypeError, ValueError):
                raise ShardpackValueError(
                    "invalid option: indices must be an iterable of sample numbers"
                ) from None
            if subset and (subset[0] < 0 or subset[-1] >= len(ds)):
                bad = subset[0] if subset[0] < 0 else subset[-1]
                raise ShardpackValueError(
                    f"invalid option: subset index {bad} is out of range: the dataset has "
                    f"{len(ds)} samples"
                )
            self._options["indices"] = subset
        self._native = _native._Loader(
            ds, epoch=epoch, **{**self._options, "io_threads": self._options["io_threads"] or 0}
        )

    # -- iteration ------------------------------------------------------------------------

    def __iter__(self) -> Iterator[list[Sample]]:
        _, epoch, _, _, consumed = self._native.position
        if consumed >= self._usable_samples():
            self._native.seek(epoch, 0)
        return self

    def __next__(self) -> list[Sample]:
        batch = self._native.next_batch()
        if batch is None:
            raise StopIteration
        return batch

    def __len__(self) -> int:
        n = self._native.samples_per_epoch
        bs = self._options["batch_size"]
        return n // bs if self._options["drop_last"] else -(-n // bs)

    def _usable_samples(self) -> int:
        n = self._native.samples_per_epoch
        bs = self._options["batch_size"]
        return n // bs * bs if self._options["drop_last"] else n

    # -- epochs and state -----------------------------------------------------------------

    @property
    def dataset(self) -> Dataset:
        """The dataset being read."""
        return self._ds

    @property
    def epoch(self) -> int:
        """The current epoch."""
        return self._native.position[1]

    @property
    def samples_per_epoch(self) -> int:
        """Samples this rank gets per epoch (``ceil(len(dataset) / world_size)``, or ``floor``
        with ``drop_last``; after loading a state saved at another world size, in the rest of
        the epoch)."""
        return self._native.samples_per_epoch

    @property
    def options(self) -> dict[str, Any]:
        """The options the loader was built with (without the epoch)."""
        return dict(self._options)

    def set_epoch(self, epoch: int) -> None:
        """Starts epoch ``epoch`` from its beginning (its own shuffled order)."""
        _count("epoch", epoch, minimum=0)
        self._native.seek(epoch, 0)

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: a small JSON-serialisable dict (O(1), no sample list).

        At a global step (every rank having taken the same number of batches) every rank's
        dict is the same except for ``rank``: save any one, and ``load_state_dict`` it on
        every rank of the new job, at the same or another world size.

        Keys: ``shardpack_loader_state`` (2), ``batch_size`` (informational: it may change
        at resume), and the library's ``LoaderState`` (its JSON layout is documented in the
        Rust ``shardpack::loader`` module): ``version``, ``dataset`` (the dataset's
        fingerprint), ``seed``, ``epoch``, ``rank`` (who saved it), ``world_size`` and
        ``samples_consumed`` (per rank, in the current part of the epoch), ``shuffle``,
        ``chunk_bytes``, ``window_chunks``, ``drop_last``, ``segments`` (earlier parts of
        the epoch at other world sizes: ``[{"world_size", "samples_consumed"}]``).
        """
        state: dict[str, Any] = json.loads(self._native.state_json())
        return {
            "shardpack_loader_state": _STATE_VERSION,
            **state,
            "batch_size": self._options["batch_size"],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continues from ``state`` (from :meth:`state_dict`, perhaps in another process, at
        another rank or world size): over all ranks, the samples of the epoch not yet handed
        out, each once (plus the documented padding), in equal counts per rank; at the same
        world size the next batch starts with exactly the sample that would have come next.
        The loader takes the state's epoch. Refuses (``ShardpackError``, naming the field, the
        saved and the current value) a state from another dataset or with other order options
        (seed, shuffle, chunk_bytes, window_chunks, drop_last); rank, world_size,
        batch_size and the other tuning options may differ. States of shardpack 0.2.0 are
        refused."""
        check_state(state)
        rust = {k: v for k, v in state.items() if k not in ("shardpack_loader_state", "batch_size")}
        try:
            text = json.dumps(rust)
        except (TypeError, ValueError) as e:
            raise ShardpackError(f"the loader state is not JSON-serialisable: {e}") from None
        self._native.load_state(text)

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """The samples left out under ``on_error="skip"`` since the loader was made, in the
        order met: dicts with ``position`` (in this rank's epoch, skipped samples counted),
        ``index`` (global sample index), ``key`` (bytes, or None when the damaged index
        cannot give it) and ``reason`` (the error's message: shard file, sample, key, field,
        what to do). Empty under ``on_error="fail"``."""
        return self._native.skipped

    def close(self) -> None:
        """Stops the reading threads now (iteration can go on later: they start again)."""
        self._native.close()

    @property
    def next_epoch_ready(self) -> bool:
        """Under ``read_next_epoch``: whether the next epoch is read ahead and waiting (after
        an epoch's last batch; ``set_epoch(epoch + 1)`` then continues with it)."""
        return bool(self._native.next_epoch_ready)

    # -- pickling -------------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        # The dataset itself (not its path): one opened from a URL pickles with its read
        # options (mode, cache_dir, cache_limit), so the copy reads the same way.
        return (_restore_loader, (self._ds, self._options, self.state_dict()))

    def __repr__(self) -> str:
        seed, epoch, rank, world, consumed = self._native.position
        return (
            f"<shardpack.Loader {os.fspath(self._ds.path)!r} batch_size={self._options['batch_size']} "
            f"seed={seed} epoch={epoch} rank={rank}/{world} at {consumed}/"
            f"{self.samples_per_epoch} samples>"
        )


class MixedLoader:
    """Several datasets mixed by weight in one epoch, read on Rust threads.

    ``MixedLoader([(path_or_dataset, weight), ...], *, batch_size, epoch_samples=None,
    seed=0, epoch=0, rank=None, world_size=None, shuffle="interleaved", drop_last=False,
    **tuning)``

    A weight is a number (a fraction of the epoch, relative to the other fractions: 0.7 and
    0.3, or 7 and 3) or ``{"samples": n}`` (exactly ``n`` samples each epoch). Counts are
    exact per epoch (fractions share what fixed counts leave, rounded by largest remainder:
    :attr:`counts`); without ``epoch_samples`` the epoch is the longest in which no fraction
    source repeats a sample. Each source serves the first ``count`` samples of its own
    chunk-shuffled epoch (another part each epoch), split by rank as one dataset is, and the
    sources are interleaved so that every batch holds each in proportion. Iterating gives
    batches as lists of ``(source, Sample)`` pairs (``source`` is the position in the list).
    ``state_dict()`` / ``load_state_dict()`` resume exactly (also at another world size);
    a state of other sources, weights, epoch size or order options is refused. The tuning
    options are :class:`Loader`'s (each source gets its own reading threads and budget).
    """

    def __init__(
        self,
        sources: Any,
        *,
        batch_size: int,
        epoch_samples: int | None = None,
        seed: int = 0,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: str = "interleaved",
        drop_last: bool = False,
        **tuning: Any,
    ) -> None:
        unknown = sorted(set(tuning) - set(_TUNING_DEFAULTS) | ({"read_next_epoch"} & set(tuning)))
        if unknown:
            raise ShardpackValueError(
                f"invalid option: unknown MixedLoader option(s) {', '.join(unknown)}"
            )
        t = {**_TUNING_DEFAULTS, **tuning}
        rank, world_size = _distributed_defaults(rank, world_size)
        datasets: list[Dataset] = []
        weights: list[tuple[str, float]] = []
        for item in sources:
            try:
                ds, w = item
            except (TypeError, ValueError):
                raise ShardpackValueError(
                    "invalid option: sources must be (dataset, weight) pairs"
                ) from None
            datasets.append(ds if isinstance(ds, _native.Dataset) else _native.Dataset(ds))
            if isinstance(w, Mapping) and set(w) == {"samples"}:
                weights.append(("samples", float(_count("samples", w["samples"], minimum=0))))
            elif isinstance(w, (int, float)) and not isinstance(w, bool):
                weights.append(("fraction", float(w)))
            else:
                raise ShardpackValueError(
                    f"invalid option: a weight is a number or {{'samples': n}}, not {w!r}"
                )
        self._native = _native._MixedLoader(
            datasets,
            weights,
            epoch_samples=None if epoch_samples is None else _count("epoch_samples", epoch_samples, minimum=0),
            batch_size=_count("batch_size", batch_size),
            seed=_count("seed", seed, minimum=0),
            epoch=_count("epoch", epoch, minimum=0),
            rank=_count("rank", rank, minimum=0),
            world_size=_count("world_size", world_size),
            shuffle=str(shuffle),
            drop_last=bool(drop_last),
            chunk_bytes=_size("chunk_bytes", t["chunk_bytes"]),
            window_chunks=_count("window_chunks", t["window_chunks"]),
            io_threads=_count("io_threads", t["io_threads"], optional=True) or 0,
            prefetch_bytes=_size("prefetch_bytes", t["prefetch_bytes"]),
            direct_io=str(t["direct_io"]),
            on_error=str(t["on_error"]),
        )

    def __iter__(self) -> Iterator[list[tuple[int, Sample]]]:
        return self

    def __next__(self) -> list[tuple[int, Sample]]:
        batch = self._native.next_batch()
        if batch is None:
            raise StopIteration
        return batch

    @property
    def counts(self) -> list[int]:
        """Each source's samples per epoch, over all ranks."""
        return list(self._native.counts)

    def set_epoch(self, epoch: int) -> None:
        """Starts epoch ``epoch`` from its beginning."""
        self._native.set_epoch(_count("epoch", epoch, minimum=0))

    def state_dict(self) -> dict[str, Any]:
        """The position: the library's ``MixedState`` (one loader state per source)."""
        state: dict[str, Any] = json.loads(self._native.state_json())
        return {"shardpack_mixed_state": 1, **state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continues from ``state`` (from :meth:`state_dict`)."""
        if not isinstance(state, Mapping) or state.get("shardpack_mixed_state") != 1:
            raise ShardpackError("not a shardpack mixed loader state (from MixedLoader.state_dict())")
        rust = {k: v for k, v in state.items() if k != "shardpack_mixed_state"}
        self._native.load_state(json.dumps(rust))

    def close(self) -> None:
        """Stops the reading threads now."""
        self._native.close()


def check_state(state: Mapping[str, Any], *_unused: Any) -> None:
    """Raises ``ShardpackError`` when ``state`` is not a loader state dict of this version.

    Only the envelope is checked here; whether the state fits the dataset and the options is
    checked by the library when it is loaded (``Loader.load_state_dict``). The extra
    positional arguments of shardpack 0.2.0 (fingerprint, options, samples) are accepted and
    ignored."""
    if not isinstance(state, Mapping) or "shardpack_loader_state" not in state:
        raise ShardpackError(
            "not a shardpack loader state (expected a dict from Loader.state_dict() with "
            f"shardpack_loader_state={_STATE_VERSION})"
        )
    v = state.get("shardpack_loader_state")
    if v == 1:
        raise ShardpackError(
            "this loader state was saved by shardpack 0.2.0 (shardpack_loader_state=1), whose "
            "epoch order this version does not reproduce; start the epoch again with "
            "set_epoch(epoch)"
        )
    if v != _STATE_VERSION:
        raise ShardpackError(
            f"the loader state has shardpack_loader_state={v!r}; this shardpack reads "
            f"{_STATE_VERSION}"
        )


def _restore_loader(path: str | Dataset, options: dict[str, Any], state: dict[str, Any]) -> Loader:
    o = dict(options)
    batch_size = o.pop("batch_size")
    loader = Loader(path, batch_size=batch_size, epoch=state["epoch"], **o)
    loader.load_state_dict(state)
    return loader
