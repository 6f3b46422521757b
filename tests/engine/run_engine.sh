#!/usr/bin/env bash
# Builds examples/engine (dcpp as a subproject with -Dtorch=disabled, dcp_core_dep) in its own
# build dir, checks that the program does not link libtorch, and runs it on the example
# checkpoint and on a 4-rank sharded one written by torch 1.13: every tensor's bytes must be
# PyTorch's (check_engine.py compares with the case's expected/*.bin).
set -euo pipefail
src=$1
build=$2
"$src/tests/support/build_example.sh" "$src/examples/engine" "$build" engine
if readelf -d "$build/engine" | grep -E 'NEEDED.*(libtorch|libc10)'; then
  echo "run_engine.sh: the engine links libtorch" >&2
  exit 1
fi
sharded="$build/sharded_4ranks"
if [[ ! -f "$sharded/expected.json" ]]; then
  rm -rf "$sharded"
  /usr/bin/python3 "$src/tests/python/make_checkpoint.py" --case sharded_4ranks --out "$sharded" >/dev/null
fi
for case_dir in "$src/examples/tiny" "$sharded"; do
  "$build/engine" "$case_dir/ckpt" >"$build/engine.out"
  tail -n 1 "$build/engine.out"
  /usr/bin/python3 "$src/tests/engine/check_engine.py" "$case_dir" "$build/engine.out"
done
