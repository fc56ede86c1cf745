"""PostgreSQL as the controllers' store and the agents' wallet, on a real local cluster.

The store's and the webhook outbox's behaviour tests (tests/unit/test_store.py, test_webhooks.py)
run here again, unchanged, on PostgreSQL: this module gives them a `store_factory` that opens a
fresh PostgreSQL database instead of an SQLite file. Then what only PostgreSQL has: the cluster's
own protections, two connections on one database, a server restart under a connected store, and
an ACA-Py 1.7 agent whose askar wallet lives in the cluster.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import pwd
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import psycopg
import pytest
from pydantic import BaseModel, SecretStr

from erx_agents.acapy import AgentLaunch, WalletStorage
from erx_core.postgres import SUPERUSER, cluster_directory
from erx_core.processes import ProcessSpec, Supervisor, free_port
from erx_core.store import Store
from tests.unit import test_store as store_behaviour
from tests.unit import test_webhooks as outbox_behaviour
from tests.unit.test_store import opener
from tests.unit.test_webhooks import log, outbox, receiver, second_receiver, store  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.integration.conftest_postgres"]
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store_factory(postgres_cluster):
    """What the behaviour tests open their store with: here a fresh PostgreSQL database per test."""
    yield from opener(postgres_cluster.database().dsn)


def _on_a_store(module) -> dict:
    """The tests of `module` that run on a store (the others, e.g. URL validation, need no second run)."""
    return {name: test for name, test in vars(module).items()
            if name.startswith("test_") and inspect.isfunction(test)
            and {"store_factory", "store", "outbox"} & set(inspect.signature(test).parameters)}


_BEHAVIOUR = {**_on_a_store(store_behaviour), **_on_a_store(outbox_behaviour)}
assert len(_BEHAVIOUR) == len(_on_a_store(store_behaviour)) + len(_on_a_store(outbox_behaviour)) > 15
globals().update(_BEHAVIOUR)


def command_lines() -> dict[int, str]:
    """Every process's command line (/proc/<pid>/cmdline), which any local user can read; and, as -1,
    all that `ps` shows (process titles included: PostgreSQL's backends retitle themselves)."""
    lines = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                lines[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
    lines[-1] = subprocess.run(["ps", "-eww", "-o", "pid,user,args"], capture_output=True, text=True,
                               check=True).stdout
    return lines


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


# -- the cluster --------------------------------------------------------------------------------------
def test_the_cluster_runs_unprivileged_on_loopback_and_asks_every_client_for_its_password(postgres_cluster):
    cluster = postgres_cluster.cluster
    assert uid_of(postgres_cluster.pid) == (pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid())
    data = cluster.data_dir.stat()
    assert data.st_uid == uid_of(postgres_cluster.pid) and data.st_mode & 0o077 == 0
    # the state directory (pytest's, below a 0700 directory) only records where the cluster lives
    assert cluster_directory(postgres_cluster.state_dir) == cluster.directory
    if os.geteuid() == 0:
        assert not cluster.directory.is_relative_to(postgres_cluster.state_dir)
    with cluster.admin() as db:
        assert db.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        rules = db.execute("SELECT type, auth_method FROM pg_hba_file_rules").fetchall()
        assert rules and {method for _, method in rules} == {"scram-sha-256"}, rules  # TCP and socket alike
        assert db.execute("SHOW unix_socket_directories").fetchone() == (str(cluster.socket_dir),)

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=cluster.host, port=cluster.port, user=SUPERUSER, password="guess", dbname="postgres")
    # each controller's (or agent's) role reaches its own database only
    mine, theirs = postgres_cluster.database("mine"), postgres_cluster.database("theirs")
    psycopg.connect(mine.dsn).close()
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(cluster.dsn(theirs.name, mine.user, mine.password))
    # no password is on any command line, nor in the server's log
    passwords = (postgres_cluster.superuser_password, mine.password, theirs.password)
    assert not [line for line in command_lines().values() if any(p in line for p in passwords)]
    assert not any(p in postgres_cluster.log_file.read_text() for p in passwords)


class Rx(BaseModel):
    rx_id: str
    state: str = "offered"


def test_transactions_on_two_connections_take_turns(postgres_cluster):
    """As SQLite's BEGIN IMMEDIATE: a second connection's transaction waits for the first's to end."""
    dsn = postgres_cluster.database().dsn
    first, second = Store(dsn), Store(dsn)
    try:
        rx_first, rx_second = first.table("rx", Rx), second.table("rx", Rx)
        entered, done = threading.Event(), threading.Event()

        def other_controller() -> None:
            entered.set()
            with second.transaction():
                seen = rx_second.get("p1")
                rx_second.put("p1", Rx(rx_id="p1", state=f"after {seen.state if seen else None}"))
            done.set()

        with first.transaction():
            rx_first.put("p1", Rx(rx_id="p1", state="issued"))
            thread = threading.Thread(target=other_controller)
            thread.start()
            assert entered.wait(5)
            assert not done.wait(0.5), "the second transaction began while the first was open"
        assert done.wait(10)
        thread.join()
        assert rx_first.get("p1") == Rx(rx_id="p1", state="after issued")
    finally:
        first.close()
        second.close()


async def test_a_store_carries_on_after_the_server_restarted(postgres_cluster):
    database = postgres_cluster.database()
    controller_store = Store(database.dsn)
    assert database.password not in repr(controller_store) and database.name in repr(controller_store)
    try:
        records = controller_store.table("rx", Rx, indexed=("state",))
        records.put("p1", Rx(rx_id="p1", state="issued"))
        postgres_cluster.stop()
        postgres_cluster.start()
        await postgres_cluster.cluster.wait_ready()
        # the connection was cut by the restart: the next statement connects again
        assert records.find("state", "issued") == Rx(rx_id="p1", state="issued")
        with controller_store.transaction():
            records.put("p2", Rx(rx_id="p2"))
        assert [r.rx_id for r in records.page(5).items] == ["p2", "p1"]
    finally:
        controller_store.close()


# -- an agent's wallet ----------------------------------------------------------------------------------
class Agent:
    """One ACA-Py 1.7 agent without a ledger, its askar wallet in PostgreSQL, run under the Supervisor."""

    def __init__(self, launch: AgentLaunch, supervisor: Supervisor, log_file: Path):
        self.launch, self.supervisor, self.log_file = launch, supervisor, log_file
        self.name = f"agent-{launch.name}"
        self.headers = {"x-api-key": launch.admin_api_key.get_secret_value()}

    async def start(self) -> int:
        aca_py = Path(sys.executable).parent / "aca-py"
        record = self.supervisor.start(ProcessSpec(
            name=self.name, argv=self.launch.argv(aca_py), env=self.launch.env(), cwd=REPO_ROOT,
            log_file=self.log_file, ports=[self.launch.inbound_port, self.launch.admin_port]))
        async with asyncio.timeout(120):
            while not await self._ready():
                assert not self.supervisor.exited_early(self.name), self.log_file.read_text()[-3000:]
                await asyncio.sleep(0.25)
        return record.pid

    async def _ready(self) -> bool:
        try:
            return (await self.get("/status/ready")).get("ready") is True
        except aiohttp.ClientError:
            return False

    def stop(self) -> None:
        self.supervisor.stop(self.name, timeout_s=20)

    async def get(self, path: str, **params: str) -> dict:
        async with aiohttp.ClientSession(headers=self.headers) as http:
            async with http.get(self.launch.admin_url + path, params=params) as response:
                response.raise_for_status()
                return await response.json()

    async def post(self, path: str, body: dict) -> dict:
        async with aiohttp.ClientSession(headers=self.headers) as http:
            async with http.post(self.launch.admin_url + path, json=body) as response:
                response.raise_for_status()
                return await response.json()


@pytest.fixture
async def wallet_agent(postgres_cluster, tmp_path):
    cluster = postgres_cluster.cluster
    role, password = f"agent_{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    launch = AgentLaunch(
        name=f"pg-{secrets.token_hex(3)}", label="Wallet in PostgreSQL", host="127.0.0.1",
        inbound_port=free_port(), admin_port=free_port(), webhook_url=f"http://127.0.0.1:{free_port()}/webhooks",
        genesis_file=None, tails_url=f"http://127.0.0.1:{free_port()}", home=tmp_path / "agent-home",
        wallet_key=SecretStr(secrets.token_urlsafe(32)), admin_api_key=SecretStr(secrets.token_urlsafe(32)),
        webhook_key=SecretStr(secrets.token_urlsafe(32)),
        wallet_storage=WalletStorage(port=cluster.port, account=role, password=SecretStr(password),
                                             max_connections=5, connect_timeout_s=10))
    # askar creates the wallet's database on the first start, as the agent's role
    cluster.ensure_role(role, password, createdb=True)
    agent = Agent(launch, Supervisor(tmp_path / "run"), tmp_path / "agent.log")
    try:
        yield agent
    finally:
        agent.stop()


async def test_an_agents_wallet_in_postgres_survives_a_restart(postgres_cluster, wallet_agent):
    launch = wallet_agent.launch
    storage = launch.wallet_storage
    assert storage is not None
    argv = launch.argv(Path("aca-py"))
    assert argv[argv.index("--wallet-storage-type") + 1] == "postgres_storage"
    assert json.loads(argv[argv.index("--wallet-storage-config") + 1])["url"] == f"127.0.0.1:{storage.port}"

    pid = await wallet_agent.start()
    created = (await wallet_agent.post("/wallet/did/create", {"method": "key"}))["result"]["did"]
    secrets_of_the_run = (storage.password.get_secret_value(), launch.wallet_key.get_secret_value(),
                          launch.admin_api_key.get_secret_value(), postgres_cluster.superuser_password)
    lines = command_lines()
    assert "aca-py" in lines[pid] and "postgres_storage" in lines[pid]
    assert not [line for line in lines.values() if any(s in line for s in secrets_of_the_run)]
    wallet_agent.stop()

    # the wallet is in the cluster, not in a file under the agent's home
    assert not [p for p in launch.home.rglob("*") if p.name.startswith("sqlite")]
    with psycopg.connect(postgres_cluster.cluster.dsn(launch.wallet_name, storage.account,
                                                      storage.password.get_secret_value())) as db:
        (items,) = db.execute("SELECT COUNT(*) FROM items").fetchone()
    assert items > 0

    await wallet_agent.start()
    dids = (await wallet_agent.get("/wallet/did", did=created))["results"]
    assert [d["did"] for d in dids] == [created]
