#!/usr/bin/env bash
# Builds examples/consumer (another Meson project importing dcp.metadata from dcpp as a
# subproject) in its own build dir and runs it on the example checkpoint.
set -euo pipefail
src=$1
build=$2
if [[ ! -f "$build/build.ninja" ]]; then
  rm -rf "$build"
  CXX=clang++-19 meson setup "$build" "$src/examples/consumer" >/dev/null
fi
ninja -C "$build" consumer >/dev/null
out=$("$build/consumer" "$src/examples/tiny/ckpt/.metadata")
echo "$out" | tail -n 1
echo "$out" | tail -n 1 | grep -q "keys (torch-1.13)"
