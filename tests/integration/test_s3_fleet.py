"""A fleet on one bucket: eight clusters (stanzas ``db1``..``db8``, each its own initdb, so the
system identifiers differ) push at once into ONE S3 bucket, each through its own async parent
and spool.  Every segment must land exactly once, under its own stanza, with its own cluster's
SHA-1: no cross-talk between stanzas that share WAL file names.
"""

from __future__ import annotations

import json
import threading
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness import procs
from pgpush_env import Pgpush, sha1_file

pytestmark = pytest.mark.integration

N = 8
SEGMENTS = 6
PREFIX = "repo"


def bucket_keys(bucket) -> list[str]:
    """Every object key in the bucket (ListObjectsV2, all pages; SeaweedFS directory markers left out)."""
    client = bucket.client()
    keys: list[str] = []
    token = None
    try:
        while True:
            query = {"list-type": "2", "max-keys": "1000"}
            if token:
                query["continuation-token"] = token
            root = ET.fromstring(client.request("GET", "", query=query).body)
            fields = {el.tag.rsplit("}", 1)[-1]: el.text for el in root}
            for item in root:
                if item.tag.endswith("Contents"):
                    key = next(c.text for c in item if c.tag.endswith("Key"))
                    if not key.endswith("/"):
                        keys.append(key)
            if fields.get("IsTruncated") != "true" or not fields.get("NextContinuationToken"):
                return keys
            token = fields["NextContinuationToken"]
    finally:
        client.close()


def read_object(bucket, key: str) -> bytes:
    client = bucket.client()
    try:
        return client.request("GET", key).body
    finally:
        client.close()


def test_eight_clusters_push_into_one_bucket_without_cross_talk(pg_factory, seaweed, pgpush_cmd, work_dir):
    repo = seaweed.pgpush_options(f"/{PREFIX}")
    stanzas = [f"db{n}" for n in range(1, N + 1)]

    def make(stanza: str):
        home = procs.make_tmp_dir(work_dir, f"pgpush-{stanza}", mode=0o755)  # the data dir is work_dir/STANZA
        pp = Pgpush(pgpush_cmd, home, stanza=stanza, repo=repo, archive_async="y", archive_timeout=60)
        pg = pg_factory(stanza, fresh=True, conf={"archive_mode": "on", "archive_command": "",
                                                  "wal_keep_size": "1GB", "max_wal_size": "1GB"})
        pp.stanza_create(pg)
        pg.set_conf({"archive_command": pp.archive_command()})
        pg.reload()
        return pp, pg

    with ThreadPoolExecutor(4) as pool:
        fleet = dict(zip(stanzas, pool.map(make, stanzas), strict=True))
    system_ids = {s: pg.system_identifier() for s, (_, pg) in fleet.items()}
    assert len(set(system_ids.values())) == N  # fresh initdb each: WAL of two clusters never matches

    # All at once: every cluster writes a little WAL and switches SEGMENTS times, then waits for its archive.
    start = threading.Barrier(N)

    def generate(stanza: str) -> list[str]:
        _, pg = fleet[stanza]
        start.wait(timeout=120)
        segs = pg.generate_wal(SEGMENTS, payload_bytes=256)
        pg.wait_archived(segs[-1], timeout=240)
        return segs

    with ThreadPoolExecutor(N) as pool:
        generated = dict(zip(stanzas, pool.map(generate, stanzas), strict=True))

    keys = bucket_keys(seaweed)
    allowed = tuple(f"{PREFIX}/{kind}/{s}/" for s in stanzas for kind in ("archive", "backup"))
    assert [k for k in keys if not k.startswith(allowed)] == []
    all_shas: list[str] = []
    for stanza, (pp, pg) in fleet.items():
        info = json.loads(read_object(seaweed, f"{PREFIX}/archive/{stanza}/archive.info"))
        assert info["db"]["system-id"] == system_ids[stanza]
        objects: dict[str, list[str]] = {}
        for key in keys:
            if key.startswith(f"{PREFIX}/archive/{stanza}/"):
                name = key.rsplit("/", 1)[-1]
                if len(name) > 25 and name[24] == "-":
                    objects.setdefault(name[:24], []).append(name[25:65])
        assert set(generated[stanza]) <= set(objects), (stanza, generated[stanza], sorted(objects))
        acknowledged = {p.name[:24] for p in (pg.wal_dir / "archive_status").glob("*.done") if len(p.name) == 29}
        assert acknowledged <= set(objects), stanza
        for seg, shas in objects.items():
            assert len(shas) == 1, (stanza, seg, shas)  # exactly once
            assert shas[0] == sha1_file(pg.wal_dir / seg), (stanza, seg)  # this cluster's own segment
            all_shas.append(shas[0])
        log = pp.log_text("archive-push-async")
        assert f"pushed WAL file '{generated[stanza][-1]}' to the archive asynchronously" in log, stanza
    # Stanzas share WAL file names (all start at ...01): their contents never mix.
    assert len(all_shas) == len(set(all_shas)) >= N * SEGMENTS
