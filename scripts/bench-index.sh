#!/usr/bin/env bash
# The index table export of a large dataset (issue 11): `shardpack index` of SAMPLES samples
# (default 1,000,000; examples/many-samples.rs writes them: three fields, 1,000 classes), to
# Parquet and to Arrow IPC, RUNS times each with a cold page cache (root: drop_caches; else
# posix_fadvise DONTNEED on the dataset's files), median printed.
#
#   scripts/bench-index.sh [DIR] [SAMPLES] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/shardpack-bench-index}
samples=${2:-1000000}
runs=${3:-5}
cargo build --release --locked -p shardpack-cli 2>&1 | tail -1
cargo build --release --locked -p shardpack --example many-samples 2>&1 | tail -1
bin=target/release/shardpack
ds=$dir/ds
if [ ! -e "$ds/manifest.json" ]; then
  rm -rf "$ds"
  mkdir -p "$ds"
  target/release/examples/many-samples "$ds" "$samples"
fi
cold() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then
    echo 3 > /proc/sys/vm/drop_caches
  else
    python3 - "$ds" <<'PY'
import os, sys
for n in os.listdir(sys.argv[1]):
    fd = os.open(os.path.join(sys.argv[1], n), os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY
  fi
}
for fmt in parquet arrow; do
  times=()
  for _ in $(seq "$runs"); do
    cold
    t=$("$bin" index "$ds" -o "$dir/index.$fmt" --format "$fmt" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
    times+=("$t")
  done
  sorted=$(printf '%s\n' "${times[@]}" | sort -g | tr '\n' ' ')
  median=$(printf '%s\n' "${times[@]}" | sort -g | sed -n "$(((runs + 1) / 2))p")
  rows=$(python3 -c "import json; print(json.load(open('$ds/manifest.json'))['samples'])")
  echo "index --format $fmt: $rows samples, median $median s over $runs cold runs ($sorted), $(du -h "$dir/index.$fmt" | cut -f1)"
done
