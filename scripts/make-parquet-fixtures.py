#!/usr/bin/env python3
"""Writes the small Parquet fixtures of fixtures/parquet/ (deterministic: same pyarrow, same bytes).

Run with the Python test venv (pyarrow): `$(scripts/python-env.sh --venv-only)/bin/python
scripts/make-parquet-fixtures.py`. The files are committed; tests/source_parquet.rs and
cli/tests/parquet.rs read them.

- basic-{snappy,zstd,gzip,lz4,none}.parquet: 20 rows in row groups of 3 (7 row groups):
  key (string), jpg (binary), txt (binary, null in rows 4 and 11), label (string, null in
  row 7), caption (string, null in row 2), width (int32), score (float64, NaN in row 5),
  ok (bool), tags (list<string>: not scalar, left out).
- hf-image.parquet: a Hugging Face-style table: image struct<bytes: binary, path: string>,
  label int64 (-1 in row 3: no label), 9 rows in row groups of 4.
- nullkey.parquet: basic's columns, key null in row 5.
- dupkey.parquet: basic's columns, row 9's key equal to row 2's.
- truncated.parquet: basic-snappy cut in half (no footer).
- damaged.parquet: basic-none with its data pages overwritten (the footer intact).
"""
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "parquet")

ROWS = 20


def payload(i, what, n):
    # Deterministic bytes that compress somewhat (a repeated pattern with the row number).
    base = f"{what}-{i:03d}:".encode()
    return (base * (n // len(base) + 1))[:n]


def basic_table(key_null=None, dup=None):
    keys = [f"s{i:03d}" for i in range(ROWS)]
    if dup is not None:
        keys[dup[1]] = keys[dup[0]]
    if key_null is not None:
        keys[key_null] = None
    classes = ["cat", "dog", "bird"]
    return pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "jpg": pa.array([b"\xff\xd8" + payload(i, "jpg", 200 + 37 * i) for i in range(ROWS)], pa.binary()),
            "txt": pa.array(
                [None if i in (4, 11) else payload(i, "txt", 10 + i) for i in range(ROWS)], pa.binary()
            ),
            "label": pa.array([None if i == 7 else classes[(i * 7) % 3] for i in range(ROWS)], pa.string()),
            "caption": pa.array([None if i == 2 else f"a photo number {i}" for i in range(ROWS)], pa.string()),
            "width": pa.array([100 + i for i in range(ROWS)], pa.int32()),
            "score": pa.array([float("nan") if i == 5 else i / 4 for i in range(ROWS)], pa.float64()),
            "ok": pa.array([i % 2 == 0 for i in range(ROWS)], pa.bool_()),
            "tags": pa.array([[f"t{i}"] for i in range(ROWS)], pa.list_(pa.string())),
        }
    )


def hf_table():
    n = 9
    img = pa.array(
        [{"bytes": b"\x89PNG" + payload(i, "png", 300 + 11 * i), "path": f"img_{i}.png"} for i in range(n)],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    return pa.table({"image": img, "label": pa.array([-1 if i == 3 else i % 4 for i in range(n)], pa.int64())})


def write(table, name, compression="snappy", row_group_size=3):
    pq.write_table(table, os.path.join(HERE, name), compression=compression, row_group_size=row_group_size)


def main():
    os.makedirs(HERE, exist_ok=True)
    t = basic_table()
    for c in ["snappy", "zstd", "gzip", "lz4", "none"]:
        write(t, f"basic-{c}.parquet", compression=c)
    write(hf_table(), "hf-image.parquet", row_group_size=4)
    write(basic_table(key_null=5), "nullkey.parquet")
    write(basic_table(dup=(2, 9)), "dupkey.parquet")
    data = open(os.path.join(HERE, "basic-snappy.parquet"), "rb").read()
    open(os.path.join(HERE, "truncated.parquet"), "wb").write(data[: len(data) // 2])
    data = bytearray(open(os.path.join(HERE, "basic-none.parquet"), "rb").read())
    footer_len = int.from_bytes(data[-8:-4], "little")
    # Overwrite the middle of the column chunks (not the footer): page headers and values.
    end = len(data) - 8 - footer_len
    for i in range(4, end, 7):
        data[i] = 0xFF
    open(os.path.join(HERE, "damaged.parquet"), "wb").write(bytes(data))
    print("wrote", sorted(os.listdir(HERE)), file=sys.stderr)


if __name__ == "__main__":
    main()
