"""`shardpack extract --format wds` read back by the `webdataset` package: every sample, every
field, byte for byte, in dataset order; and the tars are reproducible."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import shardpack
from conftest import run_cli

wds = pytest.importorskip("webdataset")


def _key_bytes(key: str) -> bytes:
    # tarfile decodes member names as UTF-8 with surrogateescape.
    return key.encode("utf-8", "surrogateescape")


def test_webdataset_reads_extracted_tars(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "wds"
    run_cli("extract", dataset, out, "--format", "wds", "--shard-size", "64KiB")
    tars = sorted(out.iterdir())
    assert len(tars) > 1 and all(t.name.startswith("shard-") for t in tars)
    ds = shardpack.open(str(dataset))
    got = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False))
    assert len(got) == len(ds)
    for i, sample in enumerate(got):
        s = ds[i]
        assert _key_bytes(sample["__key__"]) == s.key
        fields = {k: v for k, v in sample.items() if not k.startswith("__")}
        have = s.fields() if callable(s.fields) else s.fields
        assert {k: bytes(v) for k, v in have.items()} == fields, i


def test_extracted_tars_are_reproducible(dataset: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    run_cli("extract", dataset, a, "--format", "wds")
    run_cli("extract", dataset, b, "--format", "wds")
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes()
