#!/usr/bin/env bash
# Peak RSS of pack, verify and cat on one very large file (issue 8, item 9): a sparse file of
# SIZE (default 5G; written in a moment, zeros when read) packed with --compress auto (zstd:
# a few hundred KiB that decode to SIZE) and with --compress none (a SIZE shard on disk), then
# verified and read back with cat. Prints one line per command with GNU time's peak RSS.
#
# Usage: scripts/bench-large-file.sh [DIR] [SIZE] [BINARY]
#   DIR     scratch folder (default /tmp/shardpack-large; needs SIZE free for --compress none)
#   SIZE    truncate(1) size (default 5G)
#   BINARY  the shardpack binary (default target/release/shardpack, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/shardpack-large}
size=${2:-5G}
bin=${3:-target/release/shardpack}
if [ ! -x "$bin" ]; then
  cargo build --release -p shardpack-cli
fi
bin=$(realpath "$bin")
if [ ! -x /usr/bin/time ]; then
  echo "needs GNU time (/usr/bin/time): apt-get install time" >&2
  exit 1
fi
rm -rf "$dir"
mkdir -p "$dir/src"
truncate -s "$size" "$dir/src/big.bin"
for policy in auto none; do
  out=$dir/ds-$policy
  /usr/bin/time -f "pack   --compress $policy: peak RSS %M KiB, %e s" "$bin" pack -q "$dir/src" "$out" --compress "$policy" >/dev/null
  /usr/bin/time -f "verify --compress $policy: peak RSS %M KiB, %e s" "$bin" verify "$out" >/dev/null
  /usr/bin/time -f "cat    --compress $policy: peak RSS %M KiB, %e s" "$bin" cat "$out" big bin >/dev/null
  echo "dataset --compress $policy: $(du -sh "$out" | cut -f1) on disk"
  rm -rf "$out"
done
rm -rf "$dir"
