"""Unpickling helpers: datasets and samples pickle as plain data, never as open handles."""

from __future__ import annotations

import os
from typing import Any

_OPEN: dict[tuple[int, str], Any] = {}


def open_cached(path: str | os.PathLike[str]) -> Any:
    """The dataset at ``path``, opened once per process (unpickled samples share it)."""
    from . import _native

    key = (os.getpid(), os.fspath(path))
    ds = _OPEN.get(key)
    if ds is None:
        ds = _native.Dataset(path)
        _OPEN[key] = ds
    return ds


def restore_sample(path, index, key, label, fields):  # type: ignore[no-untyped-def]
    """Rebuilds a pickled ``Sample`` (its fields as owned bytes)."""
    from . import _native

    return _native._sample_from_parts(open_cached(path), index, key, label, fields)
