#!/usr/bin/env bash
# Repeats `shardpack bench` (cold cache, every phase) with 32 and with 1 loose-file threads and
# prints each round and the medians, since one run on a shared machine is one noisy sample.
#
#   scripts/bench-loader.sh DATASET LOOSE_TREE [ROUNDS] [-- extra bench options]
#
# The dataset is what `shardpack pack LOOSE_TREE DATASET` made, e.g. from
# `scripts/gen-tree.py TREE --files 250000` (~4.1 GB). ROUNDS defaults to 3. The trainer step
# defaults to 3.5 ms per batch of 256, about 1.2 GB/s of 16 KiB samples; pass --step-ms after
# `--` to change it. The JSON of every run is kept in $OUT (default: a new temporary folder).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
ds=$1
tree=$2
shift 2
rounds=3
if [[ $# -gt 0 && $1 != -- ]]; then
    rounds=$1
    shift
fi
[[ ${1:-} == -- ]] && shift
extra=("$@")
[[ " ${extra[*]:-}" == *" --step-ms"* ]] || extra+=(--step-ms 3.5)

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${SHARDPACK:-$root/target/release/shardpack}
if [[ ! -x $bin ]]; then
    (cd "$root" && cargo build --release -p shardpack-cli --locked)
fi
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"

for r in $(seq 1 "$rounds"); do
    for t in 32 1; do
        f=$out/bench-t$t-r$r.json
        "$bin" bench "$ds" --loose "$tree" --threads "$t" --json "${extra[@]}" >"$f"
        echo "round $r, $t loose threads: $f" >&2
    done
done

python3 - "$out" <<'EOF'
import glob, json, statistics, sys

out = sys.argv[1]
keys = [
    ("limit_mb_s", "limit MB/s", 0),
    ("loader_mb_s", "loader MB/s", 0),
    ("loader_to_limit", "loader / limit", 2),
    ("loose_samples_s", "loose samples/s", 0),
    ("loader_samples_s", "loader samples/s", 0),
    ("loader_to_loose", "loader / loose", 2),
    ("trainer_busy_loader", "trainer busy, loader", 3),
    ("trainer_busy_loose", "trainer busy, loose", 3),
    ("epoch_s_loader", "epoch s, loader", 2),
    ("epoch_s_loose", "epoch s, loose", 2),
]
for t in (32, 1):
    runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/bench-t{t}-r*.json"))]
    if not runs:
        continue
    evicted = all(r["cache_evicted"] for r in runs)
    print(f"\n{t} loose-file threads, {len(runs)} rounds, cache evicted in all: {evicted}")
    print(f"  {'figure':<24} {'median':>10}   rounds")
    for k, name, nd in keys:
        vals = [r[k] for r in runs if r.get(k) is not None]
        if vals:
            med = statistics.median(vals)
            print(f"  {name:<24} {med:>10.{nd}f}   " + ", ".join(f"{v:.{nd}f}" for v in vals))
    for r in runs:
        for n in r["notes"]:
            print(f"  note: {n}")
EOF
