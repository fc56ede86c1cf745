"""What every deployment's launcher shares: its process manager, waiting for health, status models.

The dev network, the health authority and each organisation are separate deployments, each with its
own home (keys, settings, logs, pid files). Each starts its processes through one `Supervisor` over its
own `run/` folder and waits for them the same way (`Launcher.until`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
from pydantic import BaseModel, SerializeAsAny

from erx_core.processes import ProcessSpec, Supervisor
from erx_core.progress import SILENT, Progress


class SetupError(RuntimeError):
    """A problem the user can fix; the message says how."""


class ComponentStatus(BaseModel):
    healthy: bool
    detail: str


class PoolStatus(ComponentStatus):
    genesis_file: str
    validators: int
    participating: int


class ChainStatus(ComponentStatus):
    rpc_url: str
    chain_id: int
    block_number: int | None = None
    contract_address: str | None = None


class TailsStatus(ComponentStatus):
    url: str


class AgentStatus(ComponentStatus):
    admin_url: str
    public_did: str | None = None


class ControllerStatus(ComponentStatus):
    url: str
    needs_attention: dict[str, str] = {}  # record id -> why start-up recovery set it aside


class NetworkStatus(BaseModel):
    healthy: bool
    components: dict[str, SerializeAsAny[ComponentStatus]]
    # web pages: the first agent of each role under its role (doctor, pharmacy, patient), others by name
    pages: dict[str, str] = {}
    # OpenAPI documents of the organisations' REST APIs, keyed the same way (doctor, pharmacy, pharmacy-b)
    api: dict[str, str] = {}


def status_json(status: NetworkStatus) -> str:
    return json.dumps(status.model_dump(mode="json"), indent=2)


class Launcher:
    """A deployment's processes: started once, waited for, stopped by pid."""

    def __init__(self, run_dir: Path, host: str, progress: Progress = SILENT):
        self.supervisor = Supervisor(run_dir, host)
        self.progress = progress

    async def start(self, spec: ProcessSpec) -> bool:
        """Start `spec` unless it runs already; True if it was started now."""
        was_running = self.supervisor.is_running(spec.name)
        self.supervisor.start(spec)
        return not was_running

    async def until(self, specs: list[ProcessSpec], check: Callable[[], Awaitable[bool]], timeout_s: float,
                    what: str) -> None:
        """Wait until `check()` passes, failing fast (with the log tail) if one of the processes dies."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            for spec in specs:
                if not self.supervisor.is_running(spec.name):
                    raise SetupError(f"{spec.name} exited while starting. Last log lines ({spec.log_file}):\n"
                                     + tail(spec.log_file))
            try:
                if await check():
                    return
            except Exception:  # not up yet: any error just means "try again"
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise SetupError(f"{what} not healthy after {timeout_s:.0f} s; see {specs[0].log_file}:\n"
                                 + tail(specs[0].log_file))
            await asyncio.sleep(0.25)

    def stop_all(self, order: list[str], timeout_s: float = 20) -> list[str]:
        """Stop the named processes in this order, then anything else this deployment recorded."""
        stopped = [name for name in order if self.supervisor.stop(name, timeout_s=timeout_s)]
        stopped += [r.name for r in self.supervisor.running() if self.supervisor.stop(r.name)]
        return stopped


async def http_ok(url: str) -> bool:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async with http.get(url) as resp:
            return resp.status == 200


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
