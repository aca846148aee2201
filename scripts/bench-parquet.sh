#!/usr/bin/env bash
# Packing a Parquet file against packing the same payloads as a folder tree, cold cache, in the
# same run. The Parquet file (snappy, row groups of 512 rows) has a string key column and two
# binary columns, jpg (incompressible, ~16 KiB) and txt (a caption, compressible); the tree
# holds the same bytes as <key>.jpg and <key>.txt files. Both are packed with --labels none
# --compress zstd:3 (one policy, no trial, so the records must come out the same), and the two
# index tables are compared (every key's field sizes, stored sizes and codecs). Each round drops
# the page cache (root: /proc/sys/vm/drop_caches) before each pack; prints each run and the
# medians.
#
#   scripts/bench-parquet.sh DIR [SAMPLES=20000] [ROUNDS=3] [BIN=target/release/shardpack]
#
# Needs the Python test venv (pyarrow): scripts/python-env.sh --venv-only prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/bench-parquet.sh DIR [SAMPLES] [ROUNDS] [BIN]}
n=${2:-20000}
rounds=${3:-3}
bin=${4:-target/release/shardpack}
[ -x "$bin" ] || cargo build --release -p shardpack-cli
py=$(scripts/python-env.sh --venv-only 2>/dev/null | tail -1)/bin/python
mkdir -p "$dir"
pqf=$dir/pq-$n.parquet
tree=$dir/tree-$n
if [ ! -f "$pqf" ] || [ ! -d "$tree" ]; then
  rm -rf "$tree"
  "$py" - "$pqf" "$tree" "$n" <<'PY'
import os, random, sys
import pyarrow as pa, pyarrow.parquet as pq
out, tree, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(7)
keys = [f"{i:07d}" for i in range(n)]
jpg = [rng.randbytes(rng.randint(8 << 10, 24 << 10)) for _ in range(n)]
txt = [(" ".join(rng.choice(["a", "photo", "of", "the", "cat", "dog", "on", "grass", "big", "red"])
        for _ in range(rng.randint(8, 40)))).encode() for _ in range(n)]
pq.write_table(pa.table({"key": keys, "jpg": pa.array(jpg, pa.binary()), "txt": pa.array(txt, pa.binary())}),
               out, compression="snappy", row_group_size=512)
os.makedirs(tree)
for k, j, t in zip(keys, jpg, txt):
    open(os.path.join(tree, k + ".jpg"), "wb").write(j)
    open(os.path.join(tree, k + ".txt"), "wb").write(t)
PY
fi
cold() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; else
    echo "bench-parquet: not root, the cache is not dropped" >&2; fi
}
run() { # SRC OUT [ARGS] -> seconds
  rm -rf "$2"
  cold
  local t0 t1 src=$1 out=$2
  shift 2
  t0=$(date +%s.%N)
  "$bin" pack -q --labels none --compress zstd:3 "$@" "$src" "$out" > /dev/null
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}
tree_s=()
pq_s=()
for r in $(seq 1 "$rounds"); do
  a=$(run "$tree" "$dir/out-tree")
  b=$(run "$pqf" "$dir/out-pq" --key-column key)
  echo "round $r: tree $a s, parquet $b s"
  tree_s+=("$a")
  pq_s+=("$b")
done
# The same records: per key and field, the same sizes, stored sizes and codecs.
"$bin" index "$dir/out-tree" -o "$dir/tree.index.parquet" > /dev/null
"$bin" index "$dir/out-pq" -o "$dir/pq.index.parquet" > /dev/null
"$py" - "$dir/tree.index.parquet" "$dir/pq.index.parquet" <<'PY'
import sys, pyarrow.parquet as pq
cols = ["key_utf8", "jpg_size", "jpg_stored", "jpg_codec", "txt_size", "txt_stored", "txt_codec"]
a, b = (pq.read_table(p, columns=cols).sort_by("key_utf8") for p in sys.argv[1:])
assert a.num_rows == b.num_rows and a.equals(b), "the records differ"
print(f"records: the same {a.num_rows} samples, sizes, stored sizes and codecs")
PY
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
mt=$(median "${tree_s[@]}")
mp=$(median "${pq_s[@]}")
echo "samples $n (parquet $(du -h "$pqf" | cut -f1), tree $(du -sh "$tree" | cut -f1), dataset $(du -sh "$dir/out-pq" | cut -f1)), medians of $rounds: tree $mt s, parquet $mp s; parquet runs at $(echo "scale=3; $mt / $mp" | bc)x the tree's speed"
rm -rf "$dir/out-tree" "$dir/out-pq"
