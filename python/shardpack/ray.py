"""Packs spread over a Ray cluster: ``shardpack.ray.pack(src, out, parts=N, **options)``.

The driver plans the pack once (``shardpack plan``: the scan, every field's compression and
dictionary, the sample order and the shard boundaries, written into ``out``), runs each part
as a Ray task (``shardpack pack --plan out --part I``), retried when a task or its worker
dies, and then merges (``shardpack merge``). The dataset is byte-identical to
``shardpack.pack(src, out, **options)`` with the same options, whatever ``parts``.

``src`` and ``out`` must be paths every Ray worker can reach (a shared file system). Parts
are idempotent: a retried part rewrites the same bytes, and a part whose receipt and shards
are already in place does nothing, so calling ``pack`` again after a failure is safe only
once the old ``out`` is removed (a plan needs a new or empty directory); to resume instead,
call :func:`run_parts` on the existing plan.

``ray`` is imported here only, when this module is used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from . import _DEFAULT_SHUFFLE_SEED, _count, _native, _share, _size
from ._errors import ShardpackValueError

__all__ = ["pack", "plan", "run_parts", "merge"]


def plan(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    parts: int,
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
    symlinks: str = "follow",
    max_skipped_share: float | str = 0.01,
    unlabeled: str = "allow",
    skip_errors: bool = False,
    dict_trainer: str = "fastcover",
) -> dict[str, Any]:
    """Plans a pack of ``src`` into ``out`` over ``parts`` parts (``shardpack plan``); the
    options are those of :func:`shardpack.pack`. Returns the plan's summary (``samples``,
    ``shards``, ``parts``: each part's ``first_sample``, ``samples``, ``first_shard``,
    ``shards``)."""
    if shuffle_seed is not None and no_shuffle:
        raise ShardpackValueError("invalid option: shuffle_seed and no_shuffle conflict")
    fc: list[tuple[str, str]] = []
    if field_compress is not None:
        if not isinstance(field_compress, Mapping):
            raise ShardpackValueError(
                "invalid option: field_compress is a dict of field name -> policy"
            )
        fc = [(str(k), str(v)) for k, v in field_compress.items()]
    nparts = _count("parts", parts, minimum=1)
    assert nparts is not None
    seed: int | None
    if no_shuffle:
        seed = None
    elif shuffle_seed is not None:
        seed = _count("shuffle_seed", shuffle_seed, minimum=0)
    else:
        seed = _DEFAULT_SHUFFLE_SEED
    result = _native._plan(
        os.fspath(src),
        os.fspath(out),
        nparts,
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
        symlinks=str(symlinks),
        max_skipped_share=_share("max_skipped_share", max_skipped_share),
        unlabeled=str(unlabeled),
        skip_errors=bool(skip_errors),
        dict_trainer=str(dict_trainer),
    )
    summary: dict[str, Any] = json.loads(result)
    return summary


def _part(out: str, part: int, threads: int) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(_native._pack_part(out, part, threads=threads))
    return summary


def run_parts(
    out: str | os.PathLike[str],
    *,
    max_retries: int = 3,
    num_cpus: float = 1,
    threads: int | None = None,
    parts: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Runs the parts of the plan in ``out`` (all, or those listed in ``parts``) as Ray tasks,
    each retried up to ``max_retries`` times when it fails or its worker dies, and returns
    their summaries in part order. A part already complete returns at once
    (``already_done``)."""
    import ray

    out = os.fspath(out)
    n = _native._plan_parts(out)
    todo = list(range(n)) if parts is None else [int(i) for i in parts]
    cpus = num_cpus if threads is None else max(num_cpus, threads)
    task = ray.remote(num_cpus=cpus, max_retries=max_retries, retry_exceptions=True)(_part)
    refs = [task.remote(out, i, threads or int(cpus) or 1) for i in todo]
    results: list[dict[str, Any]] = ray.get(refs)
    return results


def merge(out: str | os.PathLike[str], *, verify: bool = False) -> dict[str, Any]:
    """Merges the parts of the plan in ``out`` into the dataset (``shardpack merge``)."""
    summary: dict[str, Any] = json.loads(_native._merge(os.fspath(out), verify=verify))
    return summary


def pack(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    parts: int,
    max_retries: int = 3,
    num_cpus: float = 1,
    verify: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Packs ``src`` into ``out`` over ``parts`` Ray tasks: :func:`plan` (on the driver),
    :func:`run_parts` (each part a task with ``num_cpus`` CPUs, retried up to ``max_retries``
    times), :func:`merge`. ``options`` are those of :func:`shardpack.pack` (``threads`` sets
    each task's compression threads). Returns the merge's summary with the plan's
    (``plan``) and the parts' (``part_summaries``) added."""
    threads = options.get("threads")
    planned = plan(src, out, parts=parts, **options)
    done = run_parts(out, max_retries=max_retries, num_cpus=num_cpus, threads=threads)
    summary = merge(out, verify=verify)
    summary["plan"] = planned
    summary["part_summaries"] = done
    return summary
