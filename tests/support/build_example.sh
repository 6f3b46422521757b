#!/usr/bin/env bash
# Configures (once) and builds one target of a Meson project under examples/ that takes dcpp
# as a subproject, in its own build dir; prints nothing but errors.
#
#   build_example.sh EXAMPLE_SRC BUILD_DIR TARGET
set -euo pipefail
src=$1
build=$2
target=$3
if [[ ! -f "$build/build.ninja" ]]; then
  rm -rf "$build"
  CXX=clang++-19 meson setup "$build" "$src" >/dev/null
fi
ninja -C "$build" "$target" >/dev/null
