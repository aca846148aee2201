#!/usr/bin/env bash
# Packing WebDataset tars against packing the same samples as an extracted tree, cold cache,
# in the same run: the tree is scripts/gen-tree.py's (incompressible "jpg" files in 100 class
# folders), the tars are that tree packed in walk order and written back with
# `extract --format wds` (64 MiB shards), so both hold the same samples and bytes. Each round
# drops the page cache (root: /proc/sys/vm/drop_caches) before each pack; prints each run and
# the medians.
#
#   scripts/bench-wds.sh DIR [SAMPLES=25000] [ROUNDS=3] [BIN=target/release/shardpack]
#
# With WDS_GZ=1 each round also packs the tars gzipped (gzip -1, made once).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/bench-wds.sh DIR [SAMPLES] [ROUNDS] [BIN]}
n=${2:-25000}
rounds=${3:-3}
bin=${4:-target/release/shardpack}
[ -x "$bin" ] || cargo build --release -p shardpack-cli
mkdir -p "$dir"
tree=$dir/tree-$n
tars=$dir/wds-$n
if [ ! -d "$tree" ]; then
  scripts/gen-tree.py "$tree" --files "$n" --classes 100 --mean-kib 4
fi
if [ ! -d "$tars" ]; then
  rm -rf "$dir/ordered"
  "$bin" pack -q --no-shuffle "$tree" "$dir/ordered"
  "$bin" extract "$dir/ordered" "$tars" --format wds --shard-size 64MiB
  rm -rf "$dir/ordered"
fi
gz=$dir/wdsgz-$n
if [ "${WDS_GZ:-}" = 1 ] && [ ! -d "$gz" ]; then
  mkdir -p "$gz"
  for f in "$tars"/*.tar; do gzip -1 -c "$f" > "$gz/$(basename "$f").gz"; done
fi
cold() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; else
    echo "bench-wds: not root, the cache is not dropped" >&2; fi
}
run() { # KIND SRC -> seconds
  if [ "${WDS_GZ:-}" = 1 ]; then
  mg=$(median "${gz_s[@]}")
  echo "gzipped tars: median $mg s, $(echo "scale=3; $mt / $mg" | bc)x the tree's speed"
fi
rm -rf "$dir/out"
  cold
  local t0 t1
  t0=$(date +%s.%N)
  "$bin" pack -q "$2" "$dir/out" > /dev/null
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}
tree_s=()
wds_s=()
gz_s=()
for r in $(seq 1 "$rounds"); do
  a=$(run tree "$tree")
  b=$(run wds "$tars")
  c=-
  if [ "${WDS_GZ:-}" = 1 ]; then c=$(run gz "$gz"); gz_s+=("$c"); fi
  echo "round $r: tree $a s, wds $b s, wds.gz $c s"
  tree_s+=("$a")
  wds_s+=("$b")
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
mt=$(median "${tree_s[@]}")
mw=$(median "${wds_s[@]}")
echo "samples $n ($(du -sh "$tars" | cut -f1) of tars), medians of $rounds: tree $mt s, wds $mw s; wds runs at $(echo "scale=3; $mt / $mw" | bc)x the tree's speed"
if [ "${WDS_GZ:-}" = 1 ]; then
  mg=$(median "${gz_s[@]}")
  echo "gzipped tars: median $mg s, $(echo "scale=3; $mt / $mg" | bc)x the tree's speed"
fi
rm -rf "$dir/out"
