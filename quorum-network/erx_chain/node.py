"""Command line and process description for the local EVM node (anvil from npm @foundry-rs/anvil).

The process supervisor owns the lifecycle: it runs `NodeProcess.argv`, stops it by pid
with SIGTERM (anvil then dumps its state file) and calls `prepare_state_file` before a start.
"""

import asyncio
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import aiohttp
from pydantic import BaseModel, ConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]

# 1337: the id Besu's QBFT tutorials and most private dev networks use; fixed so EIP-712
# spend signatures (which bind the chain id) stay valid across node restarts.
CHAIN_ID = 1337
# A permissioned genesis raises the block gas limit (Besu examples: 0x1fffffffffffff); at the
# default 30M, 1 s blocks cap throughput at a few hundred contract calls per second.
GAS_LIMIT = 10_000_000_000
# Matches the contract's evmVersion, so opcodes a GoQuorum/old-milestone Besu lacks fail locally too.
HARDFORK = "london"


class NodeProcess(BaseModel):
    """Everything a supervisor needs to start the node and find its output."""

    model_config = ConfigDict(frozen=True)

    name: str
    argv: list[str]
    env: dict[str, str]  # extra variables on top of the inherited environment
    log_file: Path
    port: int
    state_file: Path | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def find_anvil() -> Path:
    """$ERX_ANVIL_BIN, else the binary npm installed for this platform, else `anvil` on PATH."""
    if override := os.environ.get("ERX_ANVIL_BIN"):
        return Path(override)
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine().lower()]
    system = {"linux": "linux", "darwin": "darwin", "win32": "win32"}[sys.platform]
    exe = "anvil.exe" if system == "win32" else "anvil"
    candidate = REPO_ROOT / "node_modules" / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin" / exe
    if candidate.is_file():
        return candidate
    if found := shutil.which("anvil"):
        return Path(found)
    raise FileNotFoundError(f"anvil not found at {candidate} nor on PATH: run `npm ci` in {REPO_ROOT}")


def anvil_argv(
    port: int,
    chain_id: int = CHAIN_ID,
    block_time: float | None = None,
    gas_limit: int = GAS_LIMIT,
    state_file: Path | None = None,
    state_interval: int | None = 5,
    host: str = "127.0.0.1",
    order: str | None = None,
) -> list[str]:
    """anvil configured like a permissioned gas-free network.

    block_time None: mine one block per transaction (fast tests); 1.0 mirrors QBFT's 1 s blocks.
    state_file: loaded at start if present and dumped on SIGTERM/SIGINT, and every
    state_interval seconds so that a SIGKILL loses at most that much.
    order: "fifo" mines transactions of equal fee in arrival order (the journaling proxy re-sends
    lost transactions in their original order and relies on it); None keeps anvil's default ("fees").
    """
    argv = [
        str(find_anvil()),
        "--host", host,
        "--port", str(port),
        "--chain-id", str(chain_id),
        "--hardfork", HARDFORK,
        "--gas-limit", str(gas_limit),
        # gas price 0 needs base fee 0; anvil then keeps the base fee at 0 even after full blocks.
        "--gas-price", "0",
        "--base-fee", "0",
        "--disable-min-priority-fee",
        # No unlocked, prefunded node accounts: as on a permissioned node, every client signs locally.
        "--accounts", "0",
    ]  # fmt: skip
    if order is not None:
        argv += ["--order", order]
    if block_time is not None:
        argv += ["--block-time", str(block_time)]
    if state_file is not None:
        argv += ["--state", str(state_file)]
        if state_interval is not None:
            argv += ["--state-interval", str(state_interval)]
    return argv


def anvil_process(
    port: int,
    log_file: Path,
    *,
    name: str = "anvil",
    chain_id: int = CHAIN_ID,
    block_time: float | None = None,
    gas_limit: int = GAS_LIMIT,
    state_file: Path | None = None,
    state_interval: int | None = 5,
    host: str = "127.0.0.1",
    order: str | None = None,
) -> NodeProcess:
    return NodeProcess(
        name=name,
        argv=anvil_argv(port, chain_id, block_time, gas_limit, state_file, state_interval, host, order),
        env={"NO_COLOR": "1"},  # added to the inherited environment: plain log lines
        log_file=log_file,
        port=port,
        state_file=state_file,
    )


def proxy_process(
    port: int,
    upstream_port: int,
    journal_file: Path,
    log_file: Path,
    *,
    name: str = "chain-proxy",
    host: str = "127.0.0.1",
    hold_timeout: float = 5.0,
    python: str = sys.executable,
) -> NodeProcess:
    """The journaling JSON-RPC proxy (erx_chain.proxy) on `port`, in front of anvil on `upstream_port`."""
    return NodeProcess(
        name=name,
        argv=[python, "-m", "erx_chain.proxy", "--host", host, "--port", str(port),
              "--upstream", f"http://{host}:{upstream_port}", "--journal", str(journal_file),
              "--hold-timeout", str(hold_timeout)],
        env={},
        log_file=log_file,
        port=port,
    )


def port_of(argv: list[str]) -> int | None:
    """The `--port` of a node or proxy command line (e.g. a running process's recorded argv)."""
    for flag, value in zip(argv, argv[1:]):
        if flag == "--port":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def prepare_state_file(state_file: Path) -> str:
    """Call before starting the node. anvil rewrites the state file in place (no temp file and
    rename), so a SIGKILL during a dump leaves truncated JSON that anvil refuses to load (exit 2).
    Keeps a copy of the last good file and falls back to it. Returns what it did."""
    backup = state_file.with_name(state_file.name + ".bak")
    if not state_file.exists():
        return "fresh"
    try:
        with state_file.open("rb") as f:
            json.load(f)
    except ValueError:
        state_file.replace(state_file.with_name(f"{state_file.name}.corrupt-{int(time.time())}"))
        if backup.exists():
            shutil.copyfile(backup, state_file)
            return "restored-backup"
        return "discarded-corrupt"
    shutil.copyfile(state_file, backup)
    return "loaded"


async def wait_for_rpc(rpc_url: str, timeout: float = 15.0) -> int:
    """Poll eth_chainId until the node answers; returns the chain id."""
    deadline = asyncio.get_running_loop().time() + timeout
    payload = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            try:
                async with session.post(rpc_url, json=payload) as response:
                    return int((await response.json())["result"], 16)
            except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"no JSON-RPC answer from {rpc_url} within {timeout}s") from None
                await asyncio.sleep(0.05)
