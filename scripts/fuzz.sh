#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a fixed time (FUZZ_SECONDS each, default 15: about
# 60 s in all), from corpora seeded from fixtures/ and the datasets the targets build.
#
# Needs the nightly toolchain (`cargo +nightly`) and cargo-fuzz; installs cargo-fuzz with
# `cargo install cargo-fuzz --locked` when it is missing. Without nightly, or if that install
# fails, it prints "fuzz: skipped (reason)" and exits 0. Exits non-zero when any target finds a
# crash, a timeout or an out-of-memory, and prints the path of the input that caused it; see
# fuzz/README.md for turning that into a regression test.
#
# The mutations are seeded (FUZZ_SEED, default 1), so a run on the same binary and corpus
# explores the same inputs: a CI run passes or fails for a reason, not by luck. A longer local
# campaign should vary it: FUZZ_SEED=0 lets libFuzzer pick a random seed (it prints it).
#
# Usage: scripts/fuzz.sh [TARGET...]        (default: every target)
#        FUZZ_SECONDS=180 FUZZ_SEED=0 scripts/fuzz.sh   (a longer local run, random seed)
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-15}
seed=${FUZZ_SEED:-1}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(shard_bytes manifest record_decode shard_mutate)
fi

skip() {
  echo "fuzz: skipped ($1)"
  exit 0
}

# Largest input per target. Shards of the seed corpora are up to ~55 KiB; 64 KiB also keeps
# the largest decode a record may legitimately claim (32768 x its stored size, see
# codec::max_decoded_len) under the 2048 MiB memory limit.
max_len() {
  case $1 in
    manifest) echo 16384 ;;
    shard_mutate) echo 4096 ;;
    *) echo 65536 ;;
  esac
}

if ! cargo +nightly --version >/dev/null 2>&1; then
  skip "no nightly toolchain: 'cargo +nightly' does not run"
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is missing; installing it (cargo install cargo-fuzz --locked)"
  start=$(date +%s)
  install_log=$(mktemp)
  if ! cargo install cargo-fuzz --locked >"$install_log" 2>&1; then
    tail -n 20 "$install_log"
    rm -f "$install_log"
    skip "cargo install cargo-fuzz failed after $(($(date +%s) - start)) s"
  fi
  rm -f "$install_log"
  echo "fuzz: installed $(cargo +nightly fuzz --version) in $(($(date +%s) - start)) s"
fi

start=$(date +%s)
if ! (cd fuzz && cargo run --locked --quiet -p shardpack-fuzz-support --features compile --bin seed); then
  echo "fuzz: FAILED to seed the corpora"
  exit 1
fi
echo "fuzz: corpora seeded in $(($(date +%s) - start)) s"

start=$(date +%s)
if ! cargo +nightly fuzz build; then
  echo "fuzz: FAILED to build the fuzz targets"
  exit 1
fi
echo "fuzz: targets built in $(($(date +%s) - start)) s"

mkdir -p fuzz/target/logs
failed=()
for t in "${targets[@]}"; do
  log=fuzz/target/logs/$t.log
  extra=()
  if [ -f "fuzz/dicts/$t.dict" ]; then
    extra+=("-dict=fuzz/dicts/$t.dict")
  fi
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -seed="$seed" -rss_limit_mb=2048 -timeout=10 -max_len="$(max_len "$t")" \
    "${extra[@]}" >"$log" 2>&1
  rc=$?
  # libFuzzer's last line on success is "Done N runs in T second(s)"; after a crash, the last
  # status line "#N ..." is the best count there is.
  runs=$(sed -nE 's/^Done ([0-9]+) runs.*/\1/p' "$log" | tail -n 1)
  if [ -z "$runs" ]; then
    runs=$(sed -nE 's/^#([0-9]+)[[:space:]].*/\1/p' "$log" | tail -n 1)
  fi
  if [ $rc -eq 0 ]; then
    echo "fuzz: $t: ${runs:-?} runs in $seconds s (seed ${seed/#0/random}), no crash"
  else
    failed+=("$t")
    echo "fuzz: $t: FAILED (exit $rc) after ${runs:-?} runs"
    grep -E '^(==[0-9]+== ?ERROR|SUMMARY|thread .* panicked)' "$log" | head -n 5
    grep -E 'panicked at|^Failing input|Test unit written to' "$log" | head -n 5
    artifact=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log" | tail -n 1)
    if [ -n "$artifact" ]; then
      echo "fuzz: $t: input that fails: $artifact"
      # The artifact stays on the machine that ran it; a small one is printed so that a CI
      # log alone reproduces it (echo ... | base64 -d > crash).
      if [ -f "$artifact" ] && [ "$(stat -c %s "$artifact")" -le 16384 ]; then
        echo "fuzz: $t: the input as base64: $(base64 -w0 "$artifact")"
      fi
      echo "fuzz: reproduce with: cargo +nightly fuzz run $t $artifact"
    fi
    echo "fuzz: $t: full log: $log"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED targets: ${failed[*]}"
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds} s each without a crash"
