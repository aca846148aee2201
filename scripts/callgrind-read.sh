#!/usr/bin/env bash
# Instruction counts per byte of the Loader's read path (issue 16), from
# `valgrind --tool=callgrind` on benches/read_cpu.rs: CPU time is noisy on a shared machine,
# instruction counts are not. Installs valgrind with apt if it is missing.
#
#   scripts/callgrind-read.sh [raw|zstd|dict] [SAMPLES] [SIZE]
#
# Prints the instructions (Ir) of the whole run, of the generation (measured by the same run
# with --epochs 0), their difference per stored byte of one epoch, and the functions that
# difference is spent in: each function's exclusive Ir (callgrind_annotate, inlined code
# counted where it is inlined) in the epoch run minus the generation run, the top 25.
# Defaults: raw, 4000 samples of 16 KiB (64 MiB).
set -euo pipefail
export LC_ALL=C # sort and join agree on the order
codec=${1:-raw}
samples=${2:-4000}
size=${3:-16384}
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
    echo "valgrind is missing; installing it with apt" >&2
    if [ "$(id -u)" = 0 ]; then apt-get install -y valgrind >&2; else sudo apt-get install -y valgrind >&2; fi
fi
cargo build --release --bench read_cpu >&2
bin=$(ls -t target/release/deps/read_cpu-* | grep -v '\.d$' | head -1)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() { # $1: epochs, $2: callgrind output file
    valgrind --tool=callgrind --callgrind-out-file="$2" "$bin" --codec "$codec" \
        --samples "$samples" --size "$size" --epochs "$1" --threads 2 --dir "$out" --no-compare \
        >"$2.txt" 2>"$2.err"
    grep -m1 '^summary:' "$2" | awk '{print $2}'
}
base=$(run 0 "$out/gen.cg")
full=$(run 1 "$out/epoch.cg")
stored=$(sed -n 's/.*, \([0-9.]*\) MB stored.*/\1/p' "$out/epoch.cg.txt")
echo "codec $codec, $samples samples of $size bytes, $stored MB stored"
echo "instructions: generation + open $base, with one epoch $full"
awk -v a="$full" -v b="$base" -v mb="$stored" \
    'BEGIN { printf "one loader epoch: %.0f instructions, %.3f per stored byte\n", a - b, (a - b) / (mb * 1e6) }'
# Exclusive Ir per function (summed over the source files its code is listed under), sorted.
per_fn() {
    callgrind_annotate --threshold=100 "$1" 2>/dev/null | awk '
        /file:function/ { on = 1; getline; next }
        on && /^-+$/ { exit }
        on && /^ *[0-9,]+ / {
            ir = $1; gsub(",", "", ir)
            f = $0; sub(/^ *[0-9,]+ +\([ 0-9.]+%\) +/, "", f); sub(/ \[[^]]*\]$/, "", f)
            sub(/^[^:]*:/, "", f) # the file
            s[f] += ir
        }
        END { for (k in s) print k "\t" s[k] }' | sort -t "$(printf '\t')" -k1,1
}
echo "functions of the epoch (exclusive instructions, epoch run minus generation run):"
join -t "$(printf '\t')" -a2 -e0 -o '0,1.2,2.2' <(per_fn "$out/gen.cg") <(per_fn "$out/epoch.cg") |
    awk -F '\t' '$3 - $2 != 0 { printf "%12d  %s\n", $3 - $2, $1 }' | sort -rn | head -25
