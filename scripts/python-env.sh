#!/usr/bin/env bash
# Creates (or reuses) the Python test venv and builds the shardpack extension into it.
#
#   scripts/python-env.sh             # venv + extension (dev profile); prints the venv path
#   scripts/python-env.sh --release   # venv + optimised extension (for python/bench/)
#   scripts/python-env.sh --venv-only
#
# The venv lives outside the clone, at ${SHARDPACK_VENV:-$HOME/.cache/shardpack/venv-<hash>},
# where <hash> is the first 16 hex digits of the sha256 of python/requirements-test.txt. It is
# reused when its marker file `.complete` exists (written last, after every package installed);
# a half-made venv (no marker) is deleted and made again. The first creation downloads torch
# (a large wheel with its CUDA dependencies) and takes several minutes; later runs take seconds.
#
# The extension is built with `maturin develop` into the workspace's target/, in the dev profile
# by default, so it reuses part of what `cargo test --workspace` compiled there (about 2.5
# minutes on 2 busy cores after it in a fresh clone, seconds when nothing changed; a release
# build from nothing takes about 5 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

req=python/requirements-test.txt
hash=$(sha256sum "$req" | cut -c1-16)
venv=${SHARDPACK_VENV:-$HOME/.cache/shardpack/venv-$hash}
python=${PYTHON:-python3}

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "python-env: $python is missing or older than 3.11 (shardpack's wheel needs 3.11+); set PYTHON=" >&2
  exit 1
fi

t0=$(date +%s)
if [ -e "$venv/.complete" ]; then
  echo "python-env: reusing $venv" >&2
else
  echo "python-env: creating $venv (first run: downloads torch, several minutes)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  touch "$venv/.complete"
  echo "python-env: venv created in $(($(date +%s) - t0)) s" >&2
fi

if [ "${1:-}" != "--venv-only" ]; then
  profile=()
  [ "${1:-}" = "--release" ] && profile=(--release)
  t1=$(date +%s)
  # maturin develop needs VIRTUAL_ENV to know where to install.
  (
    export VIRTUAL_ENV=$venv
    export PATH=$venv/bin:$PATH
    cd python
    maturin develop "${profile[@]}" --quiet --locked >&2
  )
  echo "python-env: extension built in $(($(date +%s) - t1)) s" >&2
fi
echo "$venv"
