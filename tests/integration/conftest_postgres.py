"""A real PostgreSQL cluster for the test session: Debian's server (apt-installed when missing), run
by `erx_core.postgres` under the Supervisor on a free port of 127.0.0.1, with a generated superuser
password, and removed at the end of the session.

Load with `pytest_plugins = ["tests.integration.conftest_postgres"]` in a test module. Each test
takes a database of its own from `postgres_cluster.database()`: a fresh role, with a fresh password,
owning a fresh database.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from erx_core.postgres import PostgresCluster, cluster_directory
from erx_core.processes import Supervisor, free_port
from erx_core.progress import Progress

SPEC_NAME = "postgres"


@dataclass(frozen=True)
class PostgresDatabase:
    name: str
    user: str
    password: str
    dsn: str  # postgresql://user:password@127.0.0.1:port/name


@dataclass
class LocalPostgres:
    cluster: PostgresCluster
    state_dir: Path  # the session's state directory (its cluster directory is recorded there)
    supervisor: Supervisor
    log_file: Path
    superuser_password: str
    start_s: float = 0.0  # initdb (first start) + start, until it accepted connections

    def database(self, prefix: str = "t") -> PostgresDatabase:
        """A fresh role owning a fresh database, both named `<prefix>_<random>`."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(24)
        self.cluster.ensure_role(name, password)
        self.cluster.ensure_database(name, owner=name)
        return PostgresDatabase(name=name, user=name, password=password, dsn=self.cluster.dsn(name, name, password))

    @property
    def pid(self) -> int:
        record = self.supervisor.record(SPEC_NAME)
        assert record is not None, f"PostgreSQL is not running; its log: {self.log_file}"
        return record.pid

    def start(self) -> None:
        self.supervisor.start(self.cluster.spec(self.log_file, name=SPEC_NAME))

    def stop(self) -> None:
        self.supervisor.stop(SPEC_NAME, timeout_s=30)


@pytest.fixture(scope="session")
async def postgres_cluster(tmp_path_factory) -> AsyncIterator[LocalPostgres]:
    state = tmp_path_factory.mktemp("postgres-state")  # 0700 below /tmp/pytest-of-root: see cluster_directory
    password = secrets.token_urlsafe(24)
    cluster = PostgresCluster(cluster_directory(state, progress=Progress()), free_port(), password)
    local = LocalPostgres(cluster, state, Supervisor(state / "run"), state / "logs" / "postgres.log", password)
    started = time.monotonic()
    cluster.initialise(Progress())
    local.start()
    try:
        await cluster.wait_ready(timeout_s=60, alive=lambda: local.supervisor.is_running(SPEC_NAME))
        local.start_s = time.monotonic() - started
        yield local
    finally:
        local.stop()
        cluster.remove()
