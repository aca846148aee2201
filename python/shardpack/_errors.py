"""The exception hierarchy. Every error shardpack raises derives from ``ShardpackError``.

- ``ShardpackIOError`` (also an ``OSError``, with ``errno`` set): a file could not be opened,
  read or written, or the dataset path does not exist.
- ``ShardpackValueError`` (also a ``ValueError``): an invalid option.
- ``CorruptError``: a shard's bytes are malformed or a record fails its checksum.
- ``ShardpackError`` itself: a bad manifest, bad pack input, a loader state that does not fit.

Messages are the command line's: the path, shard, sample and what to do.
"""

from __future__ import annotations


class ShardpackError(Exception):
    """Base class of every shardpack error."""


class ShardpackIOError(ShardpackError, OSError):
    """An operating-system error on a path (``errno`` is set when the OS gave one)."""

    def __str__(self) -> str:  # OSError's str would prefix "[Errno N]" only with 2 args
        return str(self.args[0]) if self.args else ""


class ShardpackValueError(ShardpackError, ValueError):
    """An invalid option value."""


class CorruptError(ShardpackError):
    """A shard or record is corrupt (bad magic, failed checksum, out-of-bounds offsets)."""


__all__ = ["ShardpackError", "ShardpackIOError", "ShardpackValueError", "CorruptError"]
