"""The broker database the tests run on: SQLite files, or PostgreSQL databases on a cluster the run starts.

``pytest --database postgresql`` runs every test that opens a broker on PostgreSQL
(Debian's server binaries, started here as a real server on loopback); the default is
SQLite. Each broker gets a database of its own, so tests stay as independent as they
are with files. :class:`PostgresCluster` is also what the drills and benchmarks start.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pytest

from tests.e2e.servers import free_port

__all__ = ["PostgresCluster", "backend", "fresh_url", "init_options", "select", "shutdown", "uses_database"]

BACKENDS: Final = ("sqlite", "postgresql")
_state: dict[str, object] = {"backend": "sqlite", "cluster": None, "running": None}


def postgres_bindir() -> Path | None:
    """Debian's PostgreSQL server binaries (the newest major version installed), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def require_postgres() -> Path:
    """The server binaries; skips the test without them, fails under CI=true."""
    bindir = postgres_bindir()
    if bindir is None:
        message = "PostgreSQL server not installed (apt-get install postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return bindir


class PostgresCluster:
    """One PostgreSQL server in a directory of its own, listening on a loopback port.

    Run as root, the server runs as the ``postgres`` user (it refuses root). The
    superuser ``wv`` authenticates with SCRAM and a random password, on loopback
    only. ``durable=False`` turns fsync off: for the test suite, never for drills.
    """

    def __init__(self, root: Path | None = None, *, durable: bool = False, port: int | None = None) -> None:
        self.bindir = require_postgres()
        self.root = root or Path(tempfile.mkdtemp(prefix="wv-pg-"))
        self.data = self.root / "data"
        self.port = port or free_port()
        self.password = secrets.token_hex(16)
        self.durable = durable
        self._user: str | None = "postgres" if os.geteuid() == 0 else None
        self._counter = 0

    def _run(self, args: Sequence[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self._user is not None:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        # cwd: a directory the server's user may enter (the caller's may be a 0700 temporary one).
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, cwd=self.root, **kwargs)  # type: ignore[call-overload, no-any-return]

    def init(self) -> PostgresCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self._user is not None:  # the server's own files belong to the user it runs as
            owner = pwd.getpwnam(self._user)
            for path in (self.root, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.root.chmod(0o700)
        initdb: list[str | Path] = [self.bindir / "initdb", "-D", self.data, "-U", "wv", "--auth=scram-sha-256"]
        self._run([*initdb, f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale", "--no-instructions"])
        pwfile.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "400",
            "fsync": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
            "synchronous_commit": "on",
            "log_min_messages": "warning",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("".join(f"{k} = {v}\n" for k, v in settings.items()))
        return self

    def start(self) -> PostgresCluster:
        self._run([self.bindir / "pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-w", "-t", "60", "start"])
        return self

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._run([self.bindir / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop"])

    def url(self, database: str = "postgres", *, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://wv:{self.password}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        """One statement outside a transaction (CREATE DATABASE needs that), as the superuser."""
        import psycopg

        with psycopg.connect(self.url(database, driver="postgresql"), autocommit=True) as conn:
            conn.execute(sql.encode())

    def create_database(self) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        self._counter += 1
        name = f"wv_{os.getpid()}_{self._counter}_{secrets.token_hex(3)}"
        self.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def select(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"--database must be one of {BACKENDS}")
    _state["backend"] = name


def backend() -> str:
    _check_selected()
    return str(_state["backend"])


def running(item: pytest.Item | None) -> None:
    """Note the test now running (None after it), for :func:`_check_selected`."""
    _state["running"] = item


def _check_selected() -> None:
    """Fail a test that reaches the backend although :func:`uses_database` says it does not:
    the PostgreSQL pass would skip it, so its PostgreSQL half would never run. Every test
    runs in the SQLite pass, which therefore checks the selection of the other."""
    item = _state["running"]
    if isinstance(item, pytest.Item) and not uses_database(item):
        pytest.fail(
            f"{item.nodeid} opens a broker database, but tests.databases.uses_database cannot see it "
            "(import the fixture or helper that does from a test module, or from tests.databases)"
        )


def _cluster() -> PostgresCluster:
    cluster = _state["cluster"]
    if cluster is None:
        started = time.monotonic()
        cluster = PostgresCluster().init().start()
        _state["cluster"] = cluster
        print(f"\nPostgreSQL for the broker tests: port {cluster.port}, up in {time.monotonic() - started:.1f} s")
    assert isinstance(cluster, PostgresCluster)
    return cluster


def fresh_url(directory: Path, name: str = "broker.db") -> str:
    """A broker database of its own: ``directory/name`` on SQLite, a new database on PostgreSQL."""
    _check_selected()
    if backend() == "postgresql":
        return _cluster().create_database()
    return f"sqlite:///{directory / name}"


def init_options() -> list[str]:
    """The options ``weightvault broker init`` needs for this run's backend (none for SQLite)."""
    _check_selected()
    if backend() == "postgresql":
        return ["--database-url", _cluster().create_database()]
    return []


def shutdown() -> None:
    cluster = _state["cluster"]
    if isinstance(cluster, PostgresCluster):
        cluster.destroy()
        _state["cluster"] = None


# -- which tests the PostgreSQL pass needs ---------------------------------------------------------

_TESTS: Final = Path(__file__).resolve().parent
_THIS: Final = Path(__file__).resolve()


@functools.cache
def _imports(path: Path) -> frozenset[Path]:
    """The modules of this test tree that ``path`` imports (anywhere in it, also inside functions)."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from tests import databases`` names a module; ``from tests.x import y`` a module's member.
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            if name == "tests" or not name.startswith("tests."):
                continue
            base = _TESTS.parent.joinpath(*name.split("."))
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    found.add(candidate.resolve())
    return frozenset(found)


@functools.cache
def _reaches_database(path: Path) -> bool:  # cached: asked for every test, by path
    """Whether ``path`` imports this module, directly or through other test modules."""
    seen: set[Path] = set()
    todo = [path.resolve()]
    while todo:
        current = todo.pop()
        if current == _THIS:
            return True
        if current in seen:
            continue
        seen.add(current)
        todo.extend(_imports(current))
    return False


def uses_database(item: pytest.Item) -> bool:
    """Whether a test can open a broker database: its module, or a module defining one of its
    fixtures, reaches this module's ``fresh_url``/``init_options``/``backend`` through its imports.

    The root conftest (which imports this module for ``--database``) does not count. Tests for
    which this is False do the same thing on either backend, so the PostgreSQL pass skips them.
    """
    modules = {Path(str(item.fspath))}
    info = getattr(item, "_fixtureinfo", None)
    for defs in info.name2fixturedefs.values() if info is not None else ():
        for fixture in defs:
            source = getattr(fixture.func, "__code__", None)
            if source is not None:
                modules.add(Path(source.co_filename))
    root_conftest = _TESTS / "conftest.py"
    return any(
        _reaches_database(m) for m in modules if m.resolve() != root_conftest and m.resolve().is_relative_to(_TESTS)
    )
