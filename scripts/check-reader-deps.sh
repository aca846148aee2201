#!/usr/bin/env bash
# The reader a data loader links (`shardpack` without default features) must not pull in CLI,
# walking, thread-pool, progress, Arrow or Python (pyo3) crates. Fails, naming them, if it does,
# or if it builds with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
deps=$(cargo tree -p shardpack --no-default-features -e normal --prefix none --locked | awk '{print $1}' | sort -u)
bad=$(echo "$deps" | grep -E '^(clap|clap_builder|walkdir|rayon|rayon-core|indicatif|anyhow|arrow.*|parquet|pyo3.*|numpy)$' || true)
if [ -n "$bad" ]; then
  echo "the reader depends on crates it must not: $bad"
  exit 1
fi
echo "reader dependencies ok: $(echo "$deps" | tr '\n' ' ')"
# And it builds without a warning on its own (a helper used only by the compiler, say, must be
# gated by its feature): clippy -D warnings elsewhere sees only the default features.
cargo clippy -p shardpack --no-default-features --lib --locked --quiet -- -D warnings
echo "reader builds warning-free without default features"
