#!/usr/bin/env bash
# Regenerate the corrupt-dataset fixtures (see fixtures/corrupt/README.md).
#
#   scripts/make-corrupt-fixtures.sh           # rewrite fixtures/trees/corrupt-base/ and
#                                              # fixtures/corrupt/ in place
#   scripts/make-corrupt-fixtures.sh --check   # build everything in a temporary directory and
#                                              # fail if it differs from the committed files
#
# Steps: (1) write the base source tree with scripts/corrupt.py (deterministic bytes); (2) pack
# it with the debug `shardpack` binary into 3 shards (12 + 12 + 6 samples), twice, and check the
# two packs are byte-identical; (3) pack it once more with another shuffle seed, giving a
# second, different dataset of the same shape (for swapped-shard); (4) copy the first dataset
# into fixtures/corrupt/<case>/ for every case and apply that case's edit with
# `scripts/corrupt.py apply`; (5) write the broken-rule cases from intact/ with
# `cargo run --example corrupt-fixtures` (they need xxh3, which Python's standard library lacks).
# The fixtures are format-version-1 datasets: each pack's manifest is rewritten as version 1
# (`corrupt.py v1-manifest`; version 2 changed only the manifest). Needs cargo, python3 and the
# standard tools (cmp, diff).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

check=0
case "${1:-}" in
    --check) check=1 ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

cases=(
    intact
    truncated-shard
    truncated-footer
    bad-magic
    unknown-version
    unknown-version-footer
    flipped-record-bit
    flipped-index-bit
    flipped-dict-bit
    missing-shard
    manifest-counts
    swapped-shard
    truncated-manifest
)
# Written by examples/corrupt-fixtures.rs from intact/ (step 5).
rule_cases=(
    duplicate-key
    duplicate-key-across-shards
    empty-sample
    label-out-of-range
    slash-in-field-name
    two-zstd-frames
    skippable-frame
    huge-window
    dict-without-magic
    dict-on-zstd-field
    record-codec-mismatch
    key-hash-order
    field-stats
    unknown-required-feature
)

cargo build --quiet -p shardpack-cli
bin="$root/target/debug/shardpack"

work=$(mktemp -d "${TMPDIR:-/tmp}/corrupt-fixtures.XXXXXX")
trap 'rm -rf "$work"' EXIT

tree="$work/tree"
out="$work/corrupt"
python3 scripts/corrupt.py tree "$tree"

pack() { # pack SEED OUT
    "$bin" pack "$tree" "$2" --quiet --shuffle-seed "$1" --max-samples-per-shard 12 \
        --field-compress bin=none --field-compress txt=zstd-dict --field-compress json=zstd \
        --threads 2 >/dev/null
    python3 scripts/corrupt.py v1-manifest "$2" >/dev/null
}
pack 1 "$work/base"
pack 1 "$work/base-again"
diff -r "$work/base" "$work/base-again" >/dev/null \
    || { echo "make-corrupt-fixtures: two packs of the same tree differ" >&2; exit 1; }
pack 2 "$work/other"

mkdir -p "$out"
for c in "${cases[@]}"; do
    cp -R "$work/base" "$out/$c"
    python3 scripts/corrupt.py apply "$c" "$out/$c" --other "$work/other"
done
cargo run --quiet --example corrupt-fixtures -- "$out/intact" "$out"
cases+=("${rule_cases[@]}")

if [ "$check" = 1 ]; then
    status=0
    diff -r "$tree" fixtures/trees/corrupt-base || status=1
    for c in "${cases[@]}"; do
        diff -r "$out/$c" "fixtures/corrupt/$c" || status=1
    done
    if [ "$status" = 0 ]; then
        echo "make-corrupt-fixtures: the committed fixtures are up to date"
    else
        echo "make-corrupt-fixtures: the committed fixtures differ (see above)" >&2
    fi
    exit "$status"
fi

rm -rf fixtures/trees/corrupt-base
mkdir -p fixtures/trees
cp -R "$tree" fixtures/trees/corrupt-base
mkdir -p fixtures/corrupt
for c in "${cases[@]}"; do
    rm -rf "fixtures/corrupt/$c"
    cp -R "$out/$c" "fixtures/corrupt/$c"
done
echo "make-corrupt-fixtures: wrote fixtures/trees/corrupt-base and fixtures/corrupt/"
