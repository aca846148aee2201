"""Shared fixtures: a source tree with raw, zstd and dictionary fields and non-UTF-8 keys,
packed by the CLI, and the CLI binary itself (for `extract`, the reference reader)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def cli_path() -> Path:
    env = os.environ.get("SHARDPACK_BIN")
    if env:
        return Path(env)
    for p in (REPO / "target" / "debug" / "shardpack", REPO / "target" / "release" / "shardpack"):
        if p.exists():
            return p
    raise RuntimeError(
        "the shardpack CLI is not built: run `cargo build -p shardpack-cli` (or set SHARDPACK_BIN)"
    )


@pytest.fixture(scope="session")
def cli() -> Path:
    return cli_path()


def run_cli(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(cli_path()), *map(str, args)], check=True, capture_output=True)


def make_tree(root: Path, classes: int = 3, per_class: int = 40, seed: int = 7) -> Path:
    """`bin`: incompressible (stays raw); `txt`: compressible text (zstd); `json`: many small
    similar documents (a trained dictionary when forced); one key that is not UTF-8."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir()
        for i in range(per_class):
            stem = f"{i:04d}"
            (d / f"{stem}.bin").write_bytes(rng.randbytes(rng.randint(1, 3000)))
            if i % 3:
                (d / f"{stem}.txt").write_text(("sample %d of class %d. " % (i, c)) * rng.randint(1, 40))
            (d / f"{stem}.json").write_text(
                json.dumps({"id": i, "class": c, "tags": ["a", "b", "c"][: i % 4], "w": i * 0.5})
            )
    # A key that is not valid UTF-8.
    bad = os.fsencode(root / "class0") + b"/caf\xe9\xff"
    with open(bad + b".bin", "wb") as f:
        f.write(b"\x00\x01non-utf8 key")
    return root


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("src") / "tree")


@pytest.fixture(scope="session")
def dataset(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tree packed by the CLI into several shards: txt zstd, json zstd-dict, bin auto."""
    out = tmp_path_factory.mktemp("ds") / "ds"
    run_cli(
        "pack", tree, out, "--quiet", "--max-samples-per-shard", "25",
        "--field-compress", "txt=zstd", "--field-compress", "json=zstd-dict",
    )
    return out


@pytest.fixture()
def corrupt_dataset(dataset: Path, tmp_path: Path) -> Path:
    """A copy of the dataset with one byte of a record flipped (the record checksum fails;
    open still succeeds because headers and indexes are intact)."""
    d = tmp_path / "corrupt"
    shutil.copytree(dataset, d)
    return d
