"""shardpack.pack: byte-identical to the CLI, the summary's keys, progress, Ctrl-C, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import shardpack
from conftest import make_tree, run_cli


def files_of(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_same_bytes_and_keys_as_the_cli(tree: Path, tmp_path: Path) -> None:
    cli = json.loads(
        run_cli(
            "pack", tree, tmp_path / "cli", "--json", "--quiet", "--max-samples-per-shard", "30",
            "--field-compress", "json=zstd-dict", "--shuffle-seed", "11", "--align", "64",
        ).stdout
    )
    calls = []
    py = shardpack.pack(
        tree, tmp_path / "py", max_samples_per_shard=30, field_compress={"json": "zstd-dict"},
        shuffle_seed=11, align=64, threads=2, progress=calls.append,
    )
    assert set(py) == set(cli)
    for k in ("samples", "shards", "files", "input_bytes", "output_bytes", "classes", "fields", "skipped"):
        assert py[k] == cli[k], k
    assert files_of(tmp_path / "py") == files_of(tmp_path / "cli")
    assert calls and set(calls[-1]) >= {"files_done", "files_total", "bytes_done", "notes"}


def test_dict_trainer_as_the_cli_takes_it(tree: Path, tmp_path: Path) -> None:
    """``dict_trainer="zdict"`` packs the bytes of ``--dict-trainer zdict`` and the manifest
    names the trainer; the default names FASTCOVER; an unknown name is refused."""
    run_cli("pack", tree, tmp_path / "cli", "--quiet", "--field-compress", "json=zstd-dict",
            "--dict-trainer", "zdict")
    shardpack.pack(tree, tmp_path / "py", field_compress={"json": "zstd-dict"}, dict_trainer="zdict")
    assert files_of(tmp_path / "py") == files_of(tmp_path / "cli")
    trainer = lambda d: json.loads((d / "manifest.json").read_text())["writer"]["dict_trainer"]
    assert trainer(tmp_path / "py").startswith("zdict ")
    shardpack.pack(tree, tmp_path / "default", field_compress={"json": "zstd-dict"})
    assert trainer(tmp_path / "default").startswith("fastcover:")
    with pytest.raises(shardpack.ShardpackValueError, match="dict_trainer"):
        shardpack.pack(tree, tmp_path / "bad", dict_trainer="cover")


def test_option_spellings(tree: Path, tmp_path: Path) -> None:
    s = shardpack.pack(tree, tmp_path / "o", shard_size="64KiB", no_shuffle=True, labels="none",
                       compress="zstd:3", key="last-dot", io_threads=2)
    ds = shardpack.open(tmp_path / "o")
    assert s["shards"] > 1 and ds.classes == [] and ds[0].label is None
    assert [s.key for s in ds] == sorted(s.key for s in ds)


def test_symlink_and_unlabeled_policies(tree: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(tree, src)
    first = sorted(p for p in src.rglob("*") if p.is_file())[0]
    (src / "toplevel.txt").write_bytes(b"outside any class folder")
    link = first.parent / ("link" + first.name)
    link.symlink_to(first)
    # Links are followed by default, like the CLI; symlinks="skip" leaves the link out, and
    # with the share of skipped inputs allowed that still packs.
    followed = shardpack.pack(src, tmp_path / "follow")
    skipped = shardpack.pack(src, tmp_path / "skip", symlinks="skip", max_skipped_share="100%")
    assert followed["files"] == skipped["files"] + 1
    assert followed["unlabeled"] == 1
    with pytest.raises(shardpack.ShardpackError, match="toplevel"):
        shardpack.pack(src, tmp_path / "strict", unlabeled="error")
    assert not (tmp_path / "strict" / "manifest.json").exists()
    for kw in (
        {"symlinks": "sometimes"},
        {"max_skipped_share": 2},
        {"max_skipped_share": "lots"},
        {"unlabeled": "maybe"},
        {"follow_symlinks": True, "symlinks": "skip"},
    ):
        with pytest.raises(ValueError):
            shardpack.pack(src, tmp_path / "bad", **kw)


def test_bad_options_and_inputs(tree: Path, tmp_path: Path) -> None:
    for kw in (
        {"compress": "lz5"},
        {"field_compress": {"txt": "zstd:99"}},
        {"align": 3},
        {"shard_size": "1 furlong"},
        {"shard_size": 0},
        {"labels": "folders"},
        {"key": "middle-dot"},
        {"shuffle_seed": 1, "no_shuffle": True},
        {"threads": 0},
    ):
        with pytest.raises(ValueError) as e:
            shardpack.pack(tree, tmp_path / "bad", **kw)
        assert isinstance(e.value, shardpack.ShardpackError), kw
        assert not (tmp_path / "bad" / "manifest.json").exists()
    with pytest.raises(shardpack.ShardpackError, match="does not exist"):
        shardpack.pack(tmp_path / "nope", tmp_path / "out")
    shardpack.pack(tree, tmp_path / "twice")
    with pytest.raises(shardpack.ShardpackError, match="force"):
        shardpack.pack(tree, tmp_path / "twice")
    shardpack.pack(tree, tmp_path / "twice", force=True)


def test_progress_exception_cancels(tmp_path: Path) -> None:
    """An exception in the progress callback stops the pack and removes what it wrote. The
    tree takes well over a second with one thread and the callback raises on its first call,
    so the exception always lands mid-pack."""
    src = make_tree(tmp_path / "big", classes=4, per_class=1500, seed=3)
    out = tmp_path / "out"
    seen = []

    def boom(p: dict) -> None:
        seen.append((p["files_done"], p["files_total"]))
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        shardpack.pack(src, out, threads=1, io_threads=1, progress=boom)
    assert len(seen) == 1, seen
    done, total = seen[0]
    assert total == 0 or done < total, f"the pack was already done: {seen}"
    assert not (out / "manifest.json").exists()
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    """A real SIGINT mid-pack: the child's progress callback (called about every 100 ms
    while the pack runs on Rust threads) sends SIGINT to its own process on its first call,
    once the pack has started. The tree takes well over a second to pack with one thread, so
    the signal always lands mid-pack (the test fails, rather than skips, if it does not)."""
    src = make_tree(tmp_path / "big", classes=4, per_class=1500, seed=3)
    out = tmp_path / "out"
    code = textwrap.dedent(
        """
        import os, signal, sys, shardpack
        # Python installs its KeyboardInterrupt handler only when it starts with SIGINT at its
        # default; a shell's background job starts with SIGINT ignored. Install it either way.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sent = []
        def progress(p):
            if not sent:
                sent.append(p["files_done"])
                print("signal", p["files_done"], p["files_total"], flush=True)
                os.kill(os.getpid(), signal.SIGINT)
        try:
            shardpack.pack(sys.argv[1], sys.argv[2], threads=1, io_threads=1, progress=progress)
            print("finished")
        except KeyboardInterrupt:
            print("interrupted")
        """
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(src), str(out)], stdout=subprocess.PIPE, text=True,
        timeout=120,
    )
    lines = p.stdout.split("\n")
    assert lines[0].startswith("signal "), p.stdout
    done, total = map(int, lines[0].split()[1:])
    assert total == 0 or done < total, f"the pack was already done at the signal: {p.stdout}"
    assert lines[1] == "interrupted", p.stdout
    assert p.returncode == 0
    # Nothing left looking complete: no manifest, and no shard either.
    assert not (out / "manifest.json").exists()
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "parquet"


def test_parquet_sources_pack_as_the_cli_does(tmp_path: Path) -> None:
    """A Parquet file with key, label and field columns: the bytes of `shardpack pack`."""
    src = FIXTURES / "basic-zstd.parquet"
    cli = json.loads(
        run_cli(
            "pack", src, tmp_path / "cli", "--json", "--quiet", "--key-column", "key",
            "--label-column", "label",
        ).stdout
    )
    py = shardpack.pack(src, tmp_path / "py", key_column="key", label_column="label")
    for k in ("samples", "shards", "classes", "fields"):
        assert py[k] == cli[k], k
    assert py["samples"] == 20 and py["classes"] == 3
    assert files_of(tmp_path / "py") == files_of(tmp_path / "cli")
    # A field column given as one name, and a missing column named in the error.
    hf = FIXTURES / "hf-image.parquet"
    run_cli("pack", hf, tmp_path / "hf-cli", "--quiet", "--field-column", "image")
    shardpack.pack(hf, tmp_path / "hf-py", field_columns="image")
    assert files_of(tmp_path / "hf-py") == files_of(tmp_path / "hf-cli")
    with pytest.raises(shardpack.ShardpackError, match="nope"):
        shardpack.pack(src, tmp_path / "bad", key_column="nope")
    assert not (tmp_path / "bad" / "manifest.json").exists()
