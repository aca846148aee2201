"""shardpack.ray: a pack spread over parts gives the bytes of shardpack.pack; the parts run as
tasks on a local Ray instance (skipped when ray is not installed), and the plan/part/merge
entry points work without Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

import shardpack
import shardpack.ray as spray
from conftest import make_tree

OPTIONS = {"shard_size": "24KiB", "field_compress": {"json": "zstd-dict"}, "threads": 1}


def files_of(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src", classes=3, per_class=30)


def test_plan_parts_merge_without_ray_give_the_pack_bytes(src: Path, tmp_path: Path) -> None:
    shardpack.pack(src, tmp_path / "ref", **OPTIONS)
    out = tmp_path / "out"
    p = spray.plan(src, out, parts=3, **OPTIONS)
    assert len(p["parts"]) == 3 and p["shards"] >= 3
    with pytest.raises(shardpack.ShardpackError, match="not merged yet"):
        shardpack.open(out)
    for i in (2, 0, 1):
        s = spray._part(str(out), i, 1)
        assert not s["already_done"]
    assert spray._part(str(out), 1, 1)["already_done"]
    m = spray.merge(out)
    assert m["parts"] == 3
    assert files_of(out) == files_of(tmp_path / "ref")


def test_a_missing_part_is_named(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spray.plan(src, out, parts=2, **OPTIONS)
    spray._part(str(out), 0, 1)
    with pytest.raises(shardpack.ShardpackError, match="1 of 2 parts are missing"):
        spray.merge(out)


def test_ray_tasks_give_the_pack_bytes(src: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    shardpack.pack(src, tmp_path / "ref", **OPTIONS)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = spray.pack(src, tmp_path / "out", parts=4, **OPTIONS)
    finally:
        ray.shutdown()
    assert s["parts"] == 4 and len(s["part_summaries"]) == 4
    assert files_of(tmp_path / "out") == files_of(tmp_path / "ref")
