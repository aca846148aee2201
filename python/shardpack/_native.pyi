"""Type stubs for the native module (see the docstrings of the classes at run time)."""

import os
import pathlib
from typing import Any, Callable, Iterator

class Blob:
    """Read-only bytes of one field, exported through the buffer protocol (zero-copy for raw
    records). ``bytes(b)`` copies; pickles as ``bytes``."""

    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __eq__(self, other: object) -> bool: ...
    __hash__: None  # type: ignore[assignment]  # compares equal to bytes: unhashable
    @property
    def zero_copy(self) -> bool:
        """True when the bytes are shared with a memory map or loader buffer."""

class Sample:
    """One sample: index, key, label and its fields."""

    @property
    def index(self) -> int: ...
    @property
    def key(self) -> bytes: ...
    @property
    def key_str(self) -> str | None: ...
    @property
    def label(self) -> int | None: ...
    def __getitem__(self, name: str | bytes) -> Blob: ...
    def __contains__(self, name: str | bytes) -> bool: ...
    def fields(self) -> dict[str, Blob]: ...

class Dataset:
    """An open dataset (memory-mapped shards)."""

    def __init__(self, path: str | os.PathLike[str]) -> None: ...
    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> Sample: ...
    def __iter__(self) -> Iterator[Sample]: ...
    def get(self, key: str | bytes) -> Sample | None: ...
    @property
    def path(self) -> pathlib.Path: ...
    @property
    def fields(self) -> list[str]: ...
    @property
    def field_names_bytes(self) -> list[bytes]: ...
    @property
    def classes(self) -> list[str]: ...
    @property
    def manifest(self) -> dict[str, Any]: ...
    @property
    def fingerprint(self) -> str: ...
    def verify(self) -> dict[str, Any]: ...
    def index(self) -> Any:
        """The sample index as a pyarrow.Table (format-spec/index-table.md)."""

class _Loader:
    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        seed: int,
        epoch: int,
        rank: int,
        world_size: int,
        shuffle: str,
        drop_last: bool,
        chunk_bytes: int,
        window_chunks: int,
        io_threads: int,
        prefetch_bytes: int,
        direct_io: str,
        on_error: str,
        indices: list[int] | None = None,
        read_next_epoch: bool = False,
    ) -> None: ...
    def next_batch(self) -> list[Sample] | None: ...
    def _drain(self) -> int: ...
    @property
    def skipped(self) -> list[dict[str, Any]]: ...
    def seek(self, epoch: int, samples_consumed: int, end: int | None = None) -> None: ...
    def state_json(self) -> str: ...
    def load_state(self, json: str) -> None: ...
    def close(self) -> None: ...
    @property
    def running(self) -> bool: ...
    @property
    def next_epoch_ready(self) -> bool: ...
    @property
    def samples_per_epoch(self) -> int: ...
    @property
    def position(self) -> tuple[int, int, int, int, int]: ...

def _pack(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    shard_size: int,
    max_samples_per_shard: int | None,
    compress: str,
    field_compress: list[tuple[str, str]],
    align: int,
    shuffle_seed: int | None,
    threads: int,
    io_threads: int,
    labels: str,
    key: str,
    symlinks: str,
    max_skipped_share: float,
    unlabeled: str,
    skip_errors: bool,
    force: bool,
    progress: Callable[[dict[str, Any]], Any] | None,
    key_column: str | None = ...,
    label_column: str | None = ...,
    field_columns: list[str] = ...,
    dict_trainer: str = ...,
    refs: bool = ...,
) -> str: ...
def _sample_from_parts(
    ds: Dataset,
    index: int,
    key: bytes,
    label: int | None,
    fields: list[tuple[bytes, bytes]],
) -> Sample: ...
def _version() -> str: ...
def _plan(
    src: str,
    out: str,
    parts: int,
    *,
    shard_size: int,
    max_samples_per_shard: int | None,
    compress: str,
    field_compress: list[tuple[str, str]],
    align: int,
    shuffle_seed: int | None,
    threads: int,
    io_threads: int,
    labels: str,
    key: str,
    symlinks: str,
    max_skipped_share: float,
    unlabeled: str,
    skip_errors: bool,
    dict_trainer: str = ...,
) -> str: ...
def _pack_part(out: str, part: int, *, threads: int = 0, io_threads: int = 0) -> str: ...
def _merge(out: str, *, verify: bool = False) -> str: ...
def _plan_parts(out: str) -> int: ...
def _open_remote(
    url: str,
    mode: str = "cache",
    cache_dir: str | None = None,
    cache_limit: int | None = None,
) -> Dataset: ...
def _remote_requests(ds: Dataset) -> int | None: ...

class _MixedLoader:
    def __init__(
        self,
        datasets: list[Dataset],
        weights: list[tuple[str, float]],
        *,
        epoch_samples: int | None,
        batch_size: int,
        seed: int,
        epoch: int,
        rank: int,
        world_size: int,
        shuffle: str,
        drop_last: bool,
        chunk_bytes: int,
        window_chunks: int,
        io_threads: int,
        prefetch_bytes: int,
        direct_io: str,
        on_error: str,
    ) -> None: ...
    def next_batch(self) -> list[tuple[int, Sample]] | None: ...
    def set_epoch(self, epoch: int) -> None: ...
    def state_json(self) -> str: ...
    def load_state(self, json: str) -> None: ...
    @property
    def counts(self) -> list[int]: ...
    def close(self) -> None: ...
