"""One benchmark run's environment: work dir, the two sshds, pgBackRest's set-up, WAL
sources, a SeaweedFS S3 store (started on first use), and the clean-up of everything started
(by PID; this machine's init reaps nothing)."""

from __future__ import annotations

import os
import signal
import time

from common import (
    BENCH_BASE,
    PgCluster,
    SshServer,
    WalSource,
    install_zipapps,
    log,
    make_dir,
    procs,
    rmtree,
    tool_pids,
)
from pgbackrest import DbHostSshd, PgBackRest


class BenchEnv:
    def __init__(self, keep: bool = False):
        self.keep = keep
        make_dir(BENCH_BASE, "root", 0o755)
        self.base = make_dir(BENCH_BASE / time.strftime("run-%Y%m%d-%H%M%S"), "root", 0o755)
        self.clusters: list[PgCluster] = []
        self.sources: dict[tuple, WalSource] = {}
        self.repo_sshd: SshServer | None = None
        self.db_sshd: DbHostSshd | None = None
        self.pgbr: PgBackRest | None = None
        self.seaweed = None  # harness.seaweed.SeaweedServer (tls=True), see s3()
        self.shared: dict = {}  # scenario results other scenarios may reuse (filled repos)

    def start(self) -> BenchEnv:
        install_zipapps(self.base)
        self.repo_sshd = SshServer(self.base / "sshd-repo").start()
        self.repo_sshd.verify()
        self.db_sshd = DbHostSshd(self.base / "sshd-db").start()
        self.pgbr = PgBackRest(self.base, self.repo_sshd, self.db_sshd)
        log(f"sshd (repo, pgpush-backup) on port {self.repo_sshd.port}, sshd (db host, postgres) on port "
            f"{self.db_sshd.port}; work dir {self.base}")
        return self

    def s3(self):
        """The run's SeaweedFS (S3 over plain http and over HTTPS with a self-signed certificate
        for 127.0.0.1), started on first use; stopped by cleanup() or stop_s3()."""
        if self.seaweed is None:
            from harness.seaweed import SeaweedServer

            t0 = time.monotonic()
            self.seaweed = SeaweedServer(make_dir(self.base / "seaweed", "root", 0o755), tls=True).start()
            log(f"SeaweedFS S3 on {self.seaweed.https_endpoint} (https) and {self.seaweed.endpoint}, "
                f"started in {time.monotonic() - t0:.1f}s")
        return self.seaweed

    def stop_s3(self) -> None:
        if self.seaweed is not None:
            self.seaweed.cleanup()
            self.seaweed = None

    def track(self, cluster: PgCluster) -> PgCluster:
        self.clusters.append(cluster)
        return cluster

    def source(self, kind: str, n: int) -> WalSource:
        """N ready segments of ``kind`` WAL in a stopped cluster (built once per run); random
        sources also keep a base backup taken before the WAL, for ``replay``."""
        key = (kind, n)
        if key not in self.sources:
            base_backup = kind == "random"
            log(f"writing {n} segments of {kind} WAL" + (" after a base backup" if base_backup else ""))
            src = WalSource(self.base, kind, n, with_base_backup=base_backup)
            self.track(src.cluster)
            src.build()
            self.sources[key] = src
        return self.sources[key]

    def drop_cluster(self, cluster: PgCluster) -> None:
        try:
            cluster.cleanup()
        finally:
            if cluster in self.clusters:
                self.clusters.remove(cluster)

    def cleanup(self) -> None:
        for cluster in reversed(self.clusters):
            try:
                cluster.cleanup()
            except Exception as exc:  # noqa: BLE001 - keep cleaning
                log(f"cleanup of {cluster!r} failed: {exc}")
        self.clusters.clear()
        left = tool_pids()
        for pid in left:
            procs.kill_tree(pid, sig=signal.SIGKILL, timeout=2)
        try:
            self.stop_s3()
        except Exception as exc:  # noqa: BLE001 - keep cleaning
            log(f"stopping SeaweedFS failed: {exc}")
        for server in (self.db_sshd, self.repo_sshd):
            if server is not None:
                server.cleanup()
        for pid, _desc in procs.registered_pids().items():
            if procs.pid_alive(pid):
                procs.kill_tree(pid, sig=signal.SIGKILL, timeout=2)
            procs.unregister_pid(pid)
        procs.reap_orphans()
        procs.reap_exited_children()
        zombies = [p for p in procs.children_of(os.getpid()) if procs.pid_state(p) == "Z"]
        if left:
            log(f"killed leftover processes: {left}")
        if zombies:
            log(f"zombie children left: {zombies}")
        if not self.keep:
            rmtree(self.base)
