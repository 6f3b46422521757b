#!/usr/bin/env bash
# A test this build cannot run: prints why and exits 77, which Meson reports as SKIP.
echo "SKIP: $*"
exit 77
