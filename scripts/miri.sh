#!/usr/bin/env bash
# Runs the tests of the code that parses untrusted bytes (format, manifest, rng, quality), the
# aligned-buffer code and the buffer pool under miri, which checks for undefined behaviour. The
# crate's `unsafe` blocks are all FFI (mmap, posix_fadvise, sync, zstd), which miri cannot execute;
# their tests run natively in the normal suite. Skips, saying so plainly, when nightly or miri is
# unavailable.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "miri: skipped (no nightly toolchain; install with: rustup toolchain install nightly)"
  exit 0
fi
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  echo "miri: installing the miri and rust-src components"
  if ! rustup +nightly component add miri rust-src; then
    echo "miri: skipped (could not install the miri component)"
    exit 0
  fi
fi
set -e
cargo +nightly miri test -p shardpack --lib -- \
  format:: manifest:: rng:: quality:: pool:: sys::tests::aligned
