#!/usr/bin/env bash
# The Python step of .ci/run: creates or reuses the test venv (scripts/python-env.sh), builds
# the extension into it, and runs the pytest suite in python/tests. Fails when any test fails,
# when pytest collects no test (its exit 5), and, in CI, when any test is skipped for a
# missing dependency (torch, torchdata, numpy, pillow: the venv installs them all).
#
#   scripts/python-test.sh [PYTEST ARGS...]
#
# Needs the CLI binary (target/debug/shardpack; `cargo test --workspace` builds it, and this
# script builds it if missing): the tests compare against its `pack` and `extract`.
set -euo pipefail
cd "$(dirname "$0")/.."

t0=$(date +%s)
if [ ! -x target/debug/shardpack ] && [ -z "${SHARDPACK_BIN:-}" ]; then
  cargo build -p shardpack-cli --locked
fi
venv=$(scripts/python-env.sh)
t1=$(date +%s)
echo "python-test: venv and extension ready in $((t1 - t0)) s" >&2

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
(cd python && "$venv/bin/python" -m pytest -p no:cacheprovider -rs "$@" tests) 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo "python-test: pytest ran in $(($(date +%s) - t1)) s (exit $rc)" >&2
if [ "$rc" -eq 5 ]; then
  echo "python-test: pytest collected no test; that is a failure here" >&2
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  exit "$rc"
fi
if [ "${CI:-}" = "true" ] && grep -E "^SKIPPED .*(not installed|could not import)" "$log" >/dev/null; then
  echo "python-test: tests were skipped for a missing dependency; the venv should have it" >&2
  exit 1
fi
