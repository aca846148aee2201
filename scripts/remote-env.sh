#!/usr/bin/env bash
# Installs what the remote tests and benchmarks need, once, and prints the venv path:
#   - Debian's nginx-light (a Range-capable HTTP server), through apt when `nginx` is missing;
#   - a venv with moto[server] (an S3 emulator), at
#     ${SHARDPACK_REMOTE_VENV:-$HOME/.cache/shardpack/remote-<hash>}, <hash> being the first 16
#     hex digits of the sha256 of scripts/requirements-remote.txt; reused when its `.complete`
#     marker exists (written last), made again when half made.
#
#   scripts/remote-env.sh               # install what is missing; prints the venv path
#   scripts/remote-env.sh --print-venv  # only print where the venv is (installs nothing)
#
# The servers themselves are started (on 127.0.0.1) and stopped by scripts/testsrv.py.
set -euo pipefail
cd "$(dirname "$0")/.."

req=scripts/requirements-remote.txt
hash=$(sha256sum "$req" | cut -c1-16)
venv=${SHARDPACK_REMOTE_VENV:-$HOME/.cache/shardpack/remote-$hash}
if [ "${1:-}" = "--print-venv" ]; then
  echo "$venv"
  exit 0
fi
python=${PYTHON:-python3}

t0=$(date +%s)
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "remote-env: nginx is missing and this is not root; install Debian's nginx-light (apt-get install nginx-light)" >&2
    exit 1
  fi
  echo "remote-env: installing nginx-light with apt" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends nginx-light >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends nginx-light >/dev/null; }
  # The package's own service is not wanted: tests start their nginx on loopback themselves.
  (service nginx stop || true) >/dev/null 2>&1
fi

if [ ! -e "$venv/.complete" ]; then
  echo "remote-env: creating $venv" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  touch "$venv/.complete"
fi
echo "remote-env: ready in $(($(date +%s) - t0)) s" >&2
echo "$venv"
