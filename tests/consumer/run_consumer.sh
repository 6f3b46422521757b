#!/usr/bin/env bash
# Builds examples/consumer (another Meson project importing dcp.metadata from dcpp as a
# subproject) in its own build dir and runs it on the example checkpoint.
set -euo pipefail
src=$1
build=$2
"$src/tests/support/build_example.sh" "$src/examples/consumer" "$build" consumer
out=$("$build/consumer" "$src/examples/tiny/ckpt/.metadata")
echo "$out" | tail -n 1
echo "$out" | tail -n 1 | grep -q "keys (torch-1.13)"
