"""A highly available PostgreSQL on one machine for drills: one etcd, two Patroni-managed servers.

Patroni (Debian's package) keeps a primary and a synchronous standby (``synchronous_mode``),
with etcd as its store of leader keys; when the primary's node dies, the standby is
promoted once the leader key expires (``ttl``). Clients connect with libpq's multi-host
URL and ``target_session_attrs=read-write``, so they always land on the current primary.
The same layout across three machines is in docs/operations.md.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.databases import require_postgres
from tests.e2e.servers import free_port

__all__ = ["PatroniCluster", "require_patroni"]


def require_patroni() -> None:
    """Patroni and etcd; skips without them, fails under CI=true."""
    missing = [name for name in ("patroni", "etcd") if shutil.which(name) is None]
    if missing:
        message = f"{' and '.join(missing)} not installed (apt-get install patroni etcd-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    require_postgres()


@dataclass
class _Node:
    name: str
    pg_port: int
    api_port: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def api(self, path: str) -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{self.api_port}{path}", timeout=2).status_code
        except httpx.TransportError:
            return 0


@dataclass
class PatroniCluster:
    """etcd plus two Patroni nodes in ``root``; the superuser and the broker's role get random passwords."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="wv-ha-")))
    ttl: int = 10
    nodes: list[_Node] = field(default_factory=list)
    etcd: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        require_patroni()
        self.bindir = require_postgres()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.super_pw = secrets.token_hex(12)
        self.repl_pw = secrets.token_hex(12)
        self.wv_pw = secrets.token_hex(12)
        self.etcd_port, self.etcd_peer = free_port(), free_port()

    # -- processes -------------------------------------------------------------------------
    def _own(self, path: Path) -> None:
        if self.user:
            owner = pwd.getpwnam(self.user)
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def start(self) -> PatroniCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        etcd_dir = self.root / "etcd"
        peer = f"http://127.0.0.1:{self.etcd_peer}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        with (self.root / "etcd.log").open("wb") as out:
            self.etcd = subprocess.Popen(
                [
                    *("etcd", "--name", "e1", "--data-dir", str(etcd_dir)),
                    *("--listen-client-urls", client, "--advertise-client-urls", client),
                    *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
                    *("--initial-cluster", f"e1={peer}"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._wait(lambda: self._etcd_up(client), 30, "etcd")
        for name in ("pg1", "pg2"):
            self.nodes.append(self._write_node(name))
        self.start_node(self.nodes[0])
        self._wait(lambda: self.nodes[0].api("/primary") == 200, 90, "the first primary")
        self._create_broker_role()
        self.start_node(self.nodes[1])
        self._wait(lambda: self.nodes[1].api("/sync") == 200, 90, "a synchronous standby")
        return self

    def _etcd_up(self, client: str) -> bool:
        try:
            return httpx.get(f"{client}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def _write_node(self, name: str) -> _Node:
        node_dir = self.root / name
        node_dir.mkdir()
        self._own(node_dir)
        node_dir.chmod(0o700)
        node = _Node(name, free_port(), free_port(), node_dir / "patroni.yml", node_dir / "patroni.log")
        data = node_dir / "data"
        config = f"""
scope: wv-drill
name: {name}
log: {{level: WARNING}}
restapi: {{listen: "127.0.0.1:{node.api_port}", connect_address: "127.0.0.1:{node.api_port}"}}
etcd3: {{hosts: "127.0.0.1:{self.etcd_port}"}}
bootstrap:
  dcs:
    ttl: {self.ttl}
    loop_wait: 1
    retry_timeout: 3
    maximum_lag_on_failover: 0
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters: {{synchronous_commit: "on", wal_level: replica, hot_standby: "on", wal_log_hints: "on"}}
  initdb: [{{encoding: UTF8}}, {{auth: scram-sha-256}}]
postgresql:
  listen: "127.0.0.1:{node.pg_port}"
  connect_address: "127.0.0.1:{node.pg_port}"
  data_dir: {data}
  bin_dir: {self.bindir}
  pgpass: {node_dir / "pgpass"}
  authentication:
    superuser: {{username: postgres, password: "{self.super_pw}"}}
    replication: {{username: replicator, password: "{self.repl_pw}"}}
    rewind: {{username: postgres, password: "{self.super_pw}"}}
  parameters: {{unix_socket_directories: "{node_dir}", max_connections: 200, fsync: "on"}}
  # The standby's copy starts at once instead of after a spread checkpoint (minutes).
  basebackup: [{{checkpoint: fast}}]
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
"""
        node.config.write_text(config)
        self._own(node.config)
        node.config.chmod(0o600)
        return node

    def start_node(self, node: _Node) -> None:
        with node.log.open("ab") as out:
            # Patroni itself is the child (user=, not runuser), so that killing it kills the agent.
            node.proc = subprocess.Popen(
                ["patroni", str(node.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                user=self.user,
                group=self.user,
                env={**os.environ, "HOME": str(self.root)},
                # Not the caller's directory, which the postgres user may not enter (a clone under
                # a 0700 temporary directory): Patroni's worker processes chdir to it and fail.
                cwd=self.root,
            )

    def _create_broker_role(self) -> None:
        import psycopg

        with psycopg.connect(self._dsn(self.nodes[0], "postgres", self.super_pw, "postgres"), autocommit=True) as c:
            c.execute(f"CREATE ROLE wv LOGIN PASSWORD '{self.wv_pw}'".encode())
            c.execute(b"CREATE DATABASE weightvault OWNER wv")

    @staticmethod
    def _dsn(node: _Node, user: str, password: str, db: str) -> str:
        return f"host=127.0.0.1 port={node.pg_port} user={user} password={password} dbname={db} connect_timeout=5"

    def url(self) -> str:
        """The broker's URL: both servers, and only the writable one accepted."""
        hosts = "&".join(f"host=127.0.0.1:{n.pg_port}" for n in self.nodes)
        return f"postgresql+psycopg://wv:{self.wv_pw}@/weightvault?{hosts}&target_session_attrs=read-write"

    # -- state and faults ------------------------------------------------------------------
    def primary(self) -> _Node | None:
        found = [n for n in self.nodes if n.proc is not None and n.api("/primary") == 200]
        return found[0] if len(found) == 1 else None

    def kill_node(self, node: _Node) -> None:
        """The node dies: Patroni and its PostgreSQL server get SIGKILL at once (a power cut)."""
        pids = []
        pidfile = self.root / node.name / "data" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.append(int(pidfile.read_text().splitlines()[0]))
        if node.proc is not None:
            pids.append(node.proc.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The server's other processes follow their postmaster; reap Patroni's.
        if node.proc is not None:
            node.proc.wait(10)
        node.proc = None

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.kill_node(node)
        for node in self.nodes:  # a server left by a killed Patroni
            pidfile = self.root / node.name / "data" / "postmaster.pid"
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(int(pidfile.read_text().splitlines()[0]), signal.SIGKILL)
        if self.etcd is not None:
            self.etcd.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.etcd.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def _wait(self, ready: object, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} not ready within {timeout_s} s\n{self.logs()}")

    def logs(self) -> str:
        """The tails of etcd's and each node's log (for a failure message)."""
        parts = []
        with contextlib.suppress(OSError):
            parts.append("--- etcd\n" + (self.root / "etcd.log").read_text(errors="replace")[-2000:])
        for node in self.nodes:
            with contextlib.suppress(OSError):
                parts.append(f"--- {node.name}\n" + node.log.read_text(errors="replace")[-3000:])
        return "\n".join(parts)
