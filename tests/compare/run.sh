#!/usr/bin/env bash
# Runs an oracle script under torch 2.13's Python (tools/install-deps makes it); SKIP (77) without it.
set -euo pipefail
if [ ! -x "${DCPP_PYTHON2X:-}" ]; then
  echo "no torch 2.13 Python at '${DCPP_PYTHON2X:-}' (run tools/install-deps)"
  exit 77
fi
exec "$DCPP_PYTHON2X" "$@"
