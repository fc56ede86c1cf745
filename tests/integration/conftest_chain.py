"""Fixtures that run real anvil nodes and a deployed PrescriptionToken.

Load with `pytest_plugins = ["tests.integration.conftest_chain"]` in a test module.
"""

import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from erx_chain import DevAccounts, NodeProcess, anvil_process, dev_accounts, find_anvil, wait_for_rpc
from erx_contracts import ChainConfig, PrescriptionTokenClient

N_DOCTORS = 2  # onboarded; one more is derived as an outsider
N_PHARMACIES = 20  # onboarded; one more is derived as an outsider


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningNode:
    node: NodeProcess
    popen: subprocess.Popen[bytes]

    @property
    def rpc_url(self) -> str:
        return self.node.rpc_url

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signals our own process by pid and waits; returns its exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@dataclass
class AnvilNodes:
    """Starts anvil processes on free ports (logs in log_dir) and stops them all at teardown."""

    log_dir: Path
    running: list[RunningNode] = field(default_factory=list)

    def describe(self, name: str, **options: Any) -> NodeProcess:
        return anvil_process(free_port(), self.log_dir / f"{name}.log", name=name, **options)

    async def start(self, node: NodeProcess) -> RunningNode:
        with node.log_file.open("ab") as log:
            popen = subprocess.Popen(node.argv, env=os.environ | node.env, stdout=log, stderr=subprocess.STDOUT)
        running = RunningNode(node, popen)
        self.running.append(running)
        await wait_for_rpc(node.rpc_url)
        return running

    def stop_all(self) -> None:
        for running in self.running:
            running.stop()


@pytest.fixture(scope="session")
def anvil_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnvilNodes]:
    try:
        find_anvil()
    except FileNotFoundError as exc:
        pytest.skip(f"anvil is not installed: {exc}")
    nodes = AnvilNodes(tmp_path_factory.mktemp("anvil"))
    yield nodes
    nodes.stop_all()


@pytest.fixture(scope="session")
async def chain(anvil_nodes: AnvilNodes) -> RunningNode:
    """The session's node in automine mode (one block per transaction)."""
    return await anvil_nodes.start(anvil_nodes.describe("anvil-automine"))


@pytest.fixture(scope="session")
def actors() -> DevAccounts:
    return dev_accounts(n_doctors=N_DOCTORS + 1, n_pharmacies=N_PHARMACIES + 1)


@dataclass
class Deployment:
    admin: PrescriptionTokenClient
    doctors: list[PrescriptionTokenClient]  # onboarded issuers
    pharmacies: list[PrescriptionTokenClient]  # onboarded dispensers
    outsider_doctor: PrescriptionTokenClient  # never onboarded
    outsider_pharmacy: PrescriptionTokenClient  # never onboarded

    @property
    def config(self) -> ChainConfig:
        return self.admin.config


async def deploy_and_onboard(rpc_url: str, actors: DevAccounts) -> Deployment:
    admin = await PrescriptionTokenClient.deploy(ChainConfig(rpc_url=rpc_url), actors.authority)
    doctors, pharmacies = actors.doctors[:N_DOCTORS], actors.pharmacies[:N_PHARMACIES]
    # All in flight at once from one account: exercises the client's nonce tracking.
    await asyncio.gather(
        *(admin.add_issuer(d.address) for d in doctors), *(admin.add_dispenser(p.address) for p in pharmacies)
    )
    return Deployment(
        admin=admin,
        doctors=[admin.for_account(d) for d in doctors],
        pharmacies=[admin.for_account(p) for p in pharmacies],
        outsider_doctor=admin.for_account(actors.doctors[N_DOCTORS]),
        outsider_pharmacy=admin.for_account(actors.pharmacies[N_PHARMACIES]),
    )


@pytest.fixture(scope="session")
async def deployment(chain: RunningNode, actors: DevAccounts) -> AsyncIterator[Deployment]:
    deployed = await deploy_and_onboard(chain.rpc_url, actors)
    yield deployed
    await deployed.admin.close()
