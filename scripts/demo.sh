#!/usr/bin/env bash
# Builds shardpack and runs the main job on the bundled example tree:
# pack fixtures/example into target/demo/example.spk, then info and verify it.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p shardpack-cli
bin=target/release/shardpack
out=target/demo/example.spk

mkdir -p target/demo
"$bin" pack fixtures/example "$out" --force
echo
"$bin" info "$out"
echo
"$bin" verify "$out"
echo
echo "first samples (shardpack ls $out | head -5):"
"$bin" ls "$out" | head -5
