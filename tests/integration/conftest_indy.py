"""Fixtures that run a real 4-validator indy-node pool on free ports in a throw-away folder.

Load with `pytest_plugins = ["tests.integration.conftest_indy"]` in a test module. The node
venv is the project's own (.erx/venv/indy-node), built on first use by ensure_node_venv.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from erx_indy.ledger import IndyLedger, PoolStatus
from erx_indy.node_venv import default_base_python, ensure_node_venv
from erx_core.settings import Settings
from erx_indy.pool import DEV_TRUSTEE_SEED, NodeProcess, init_pool, node_processes, pick_free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_VENV = Settings().paths.node_venv
N_NODES = 4


@dataclass
class LocalIndyPool:
    """Starts and stops the validators of one pool folder as child processes of the test."""

    pool_dir: Path
    node_venv: Path
    genesis: Path
    popens: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    fresh_start_s: float | None = None  # start of the processes -> 4/4 participating

    @property
    def processes(self) -> list[NodeProcess]:
        return node_processes(self.pool_dir, self.node_venv)

    def start(self) -> None:
        for proc in self.processes:
            if proc.name in self.popens and self.popens[proc.name].poll() is None:
                continue
            proc.log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(proc.log_file, "ab") as log:
                self.popens[proc.name] = subprocess.Popen(
                    proc.argv, cwd=proc.cwd, env={**os.environ, **proc.env}, stdout=log, stderr=subprocess.STDOUT
                )

    def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM every node we started (by pid), wait; returns their exit codes."""
        for popen in self.popens.values():
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        codes = {}
        for name, popen in self.popens.items():
            try:
                codes[name] = popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                codes[name] = popen.wait()
        self.popens.clear()
        return codes

    def rss_mb(self) -> dict[str, float]:
        rss = {}
        for name, popen in self.popens.items():
            for line in Path(f"/proc/{popen.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss[name] = int(line.split()[1]) / 1024
        return rss

    async def wait_participating(self, timeout: float = 120.0) -> PoolStatus:
        """Wait until every validator reports Mode participating; fail fast if one exits."""
        deadline = time.monotonic() + timeout
        async with await IndyLedger.open(self.genesis) as ledger:
            await ledger.wait_ready(timeout)
            while True:
                for proc in self.processes:
                    if self.popens[proc.name].poll() is not None:
                        tail = "\n".join(proc.log_file.read_text().splitlines()[-20:])
                        raise AssertionError(f"{proc.name} exited while starting:\n{tail}")
                status = await ledger.nodes_status(DEV_TRUSTEE_SEED, timeout=2)
                if status.participating == status.total:
                    return status
                if time.monotonic() > deadline:
                    raise AssertionError(f"pool not participating after {timeout:.0f} s: {status}")
                await asyncio.sleep(0.25)


@pytest.fixture(scope="session")
def indy_node_venv() -> Path:
    ensure_node_venv(NODE_VENV, default_base_python())
    return NODE_VENV


@pytest.fixture(scope="module")
async def indy_pool(indy_node_venv, tmp_path_factory) -> AsyncIterator[LocalIndyPool]:
    """A fresh pool, 4/4 participating; `fresh_start_s` says how long that took."""
    pool_dir = tmp_path_factory.mktemp("indy-pool")
    ports = pick_free_ports(2 * N_NODES)
    genesis = init_pool(
        pool_dir, indy_node_venv, node_ports=ports[0::2], client_ports=ports[1::2], network_name="erx-test"
    )
    pool = LocalIndyPool(pool_dir, indy_node_venv, genesis)
    started = time.monotonic()
    pool.start()
    try:
        await pool.wait_participating()
        pool.fresh_start_s = time.monotonic() - started
        yield pool
    finally:
        pool.stop()
