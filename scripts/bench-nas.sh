#!/usr/bin/env bash
# The NAS story on one machine: a trainer fed by loose files over a file system whose every
# operation pays a latency, against the same trainer fed by shardpack over the same file system.
#
#   scripts/bench-nas.sh [--files 6000] [--kib 100] [--latency-ms 2] [--batch 64]
#                        [--step-ms 35] [--threads 32] [--epochs 2] [--work DIR] [--json]
#
# 1. writes an image-like tree (scripts/gen-tree.py: --files incompressible files of about
#    --kib KiB in 10 class folders, fixed seed) and packs it (`shardpack pack`);
# 2. mounts scripts/latency-fs.py (a FUSE passthrough that sleeps --latency-ms in every getattr,
#    open and read, with entry/attribute caching off) over the tree and over the dataset;
# 3. runs `shardpack bench MOUNTED_DATASET --loose MOUNTED_TREE --step-ms ... --batch ...`:
#    the loader, loose files read by --threads threads, and a simulated trainer (a sleep of
#    --step-ms per batch) fed by each; the lines to read are "fed by loose files: busy X%" and
#    "fed by the loader: busy Y%";
# 4. prints how many operations each file system served (every one of them paid the latency).
#
# Cold reads: the tree is mounted with direct_io (no page cache: every read() reaches the FUSE
# program); the dataset with the page cache dropped at every open (shardpack memory-maps its
# shards, which libfuse 3.14 refuses for direct_io files) and the loader reading with O_DIRECT,
# which always reaches the FUSE program; `bench` also evicts every file before each phase. The
# operation counts printed at the end show the bytes the FUSE programs served.
#
# Needs: fusermount3 (Debian's fuse3: installed with apt when missing and root), the venv of
# scripts/remote-env.sh (mfusepy), and a shardpack binary ($SHARDPACK_BIN, else
# target/release/shardpack, else target/debug/shardpack). Everything is unmounted and removed on
# exit (--work DIR keeps the generated tree and dataset in DIR for the next run).
set -euo pipefail
cd "$(dirname "$0")/.."

files=6000 kib=100 latency=2 batch=64 step=35 threads=32 epochs=2 work="" json=""
while [ $# -gt 0 ]; do
  case "$1" in
    --files) files=$2; shift 2 ;;
    --kib) kib=$2; shift 2 ;;
    --latency-ms) latency=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --step-ms) step=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --json) json=--json; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-nas: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if ! command -v fusermount3 >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "bench-nas: fusermount3 is missing; install Debian's fuse3 (apt-get install fuse3)" >&2
    exit 1
  fi
  echo "bench-nas: installing fuse3 with apt" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends fuse3 >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends fuse3 >/dev/null; }
fi
[ -e /dev/fuse ] || { echo "bench-nas: /dev/fuse is missing: no FUSE on this machine" >&2; exit 1; }

venv=$(scripts/remote-env.sh)
bin=${SHARDPACK_BIN:-}
if [ -z "$bin" ]; then
  for b in target/release/shardpack target/debug/shardpack; do
    if [ -x "$b" ]; then bin=$b; break; fi
  done
fi
[ -n "$bin" ] || { echo "bench-nas: no shardpack binary: cargo build --release -p shardpack-cli" >&2; exit 1; }
case "$bin" in *debug*) echo "bench-nas: note: $bin is a debug build; a release build is faster" >&2 ;; esac

tmp=$(mktemp -d /tmp/shardpack-nas.XXXXXX)
[ -n "$work" ] || work=$tmp/work
mkdir -p "$work"
fs_pids=()
bench_pid=""
cleanup() {
  if [ -n "$bench_pid" ]; then kill -TERM "$bench_pid" 2>/dev/null || true; wait "$bench_pid" 2>/dev/null || true; fi
  exec 8>&- 9>&- 2>/dev/null || true # the FUSE programs see end of file and unmount
  for pid in "${fs_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${fs_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for m in "$tmp/mnt-tree" "$tmp/mnt-ds"; do
    if mountpoint -q "$m" 2>/dev/null; then fusermount3 -u -z "$m" || true; fi
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

tree=$work/tree ds=$work/ds
if [ ! -e "$work/.made-$files-$kib" ]; then
  rm -rf "$tree" "$ds" "$work"/.made-*
  t0=$(date +%s)
  python3 scripts/gen-tree.py "$tree" --files "$files" --classes 10 --mean-kib "$kib" >&2
  "$bin" pack "$tree" "$ds" --quiet
  touch "$work/.made-$files-$kib"
  echo "bench-nas: tree written and packed in $(($(date +%s) - t0)) s" >&2
fi

# mount SRC MOUNTPOINT CACHE FD: a latency-fs whose stdin is a FIFO held open on FD.
mount_latency() {
  local src=$1 mnt=$2 cache=$3 fd=$4
  mkdir -p "$mnt"
  mkfifo "$mnt.hold"
  "$venv/bin/python" scripts/latency-fs.py "$src" "$mnt" --latency-ms "$latency" --cache "$cache" \
    --stats "$mnt.stats" --max-seconds 3600 <"$mnt.hold" 2>"$mnt.log" &
  fs_pids+=($!)
  eval "exec $fd>\"\$mnt.hold\""
  for _ in $(seq 200); do
    if mountpoint -q "$mnt"; then return 0; fi
    sleep 0.05
  done
  echo "bench-nas: $mnt did not mount:" >&2
  cat "$mnt.log" >&2
  exit 1
}
mount_latency "$tree" "$tmp/mnt-tree" direct 8
mount_latency "$ds" "$tmp/mnt-ds" per-open 9

samples=$(find "$tree" -type f | wc -l)
mb=$(du -sm --apparent-size "$tree" | cut -f1)
echo "bench-nas: $samples files, $mb MB; every getattr, open and read pays $latency ms" \
  "(loose tree: direct_io; dataset: page cache dropped at each open, loader O_DIRECT)" >&2
# In the background and waited for, so that a SIGINT/SIGTERM runs the trap at once (bash defers
# traps while a foreground child runs); the trap stops it before unmounting.
"$bin" bench "$tmp/mnt-ds" --loose "$tmp/mnt-tree" --threads "$threads" --batch "$batch" \
  --step-ms "$step" --epochs "$epochs" $json &
bench_pid=$!
wait "$bench_pid"
bench_pid=""

# Unmount now (not in the trap) to print what each file system served.
exec 8>&- 9>&-
for pid in "${fs_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
fs_pids=()
for m in tree ds; do
  if [ -s "$tmp/mnt-$m.stats" ]; then
    echo "bench-nas: latency-fs over the $( [ $m = tree ] && echo "loose tree" || echo dataset ): $(cat "$tmp/mnt-$m.stats")" >&2
  fi
done
