#!/bin/sh
# Builds the release CLI, then runs the pack benchmark program (benches/pack.rs) with the given
# arguments, e.g.:
#   scripts/bench-pack.sh throughput --files 100000 --rounds 3
#   scripts/bench-pack.sh rss --counts 100000,300000,1000000
#   scripts/bench-pack.sh textsize
# Cold-cache runs need root for /proc/sys/vm/drop_caches (posix_fadvise works without it).
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p shardpack-cli
exec cargo bench --bench pack -- "$@"
