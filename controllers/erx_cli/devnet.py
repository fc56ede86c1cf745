"""The development network: an Indy pool, an EVM node (behind its journaling proxy) and a tails server,
as native processes, in a home of their own (`<home>/network`).

In production these are shared infrastructure run by others (the Indy network's stewards, the
permissioned chain's validators, a public tails server). Here `erx network up` starts them, waits
until each is healthy and writes the first half of the network descriptor (`descriptor.json`: where
the genesis, the RPC endpoint and the tails server are). The health authority completes it
(`erx_cli.authority`). The pool's genesis trustee seeds are this deployment's own secrets: it admits
the health authority (as TRUSTEE) and nobody else.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp

from erx_chain.node import anvil_process, port_of, prepare_state_file, proxy_process
from erx_cli.launch import ChainStatus, Launcher, PoolStatus, SetupError, TailsStatus, http_ok
from erx_core.descriptor import EvmChainRef, IndyNetworkRef, NetworkDescriptor
from erx_core.processes import ProcessSpec
from erx_core.progress import SILENT, Progress
from erx_core.secrets import SecretStore
from erx_core.settings import Settings
from erx_indy.ledger import IndyLedger
from erx_indy.node_venv import ensure_node_venv
from erx_indy.pool import init_pool, node_processes


class DevNetwork:
    def __init__(self, settings: Settings, progress: Progress = SILENT):
        self.settings = settings
        self.home = settings.paths.network
        self.progress = progress
        self.secrets = SecretStore(self.home / "secrets.json")
        self.launcher = Launcher(self.home / "run", settings.host, progress)
        self.supervisor = self.launcher.supervisor
        self.logs = self.home / "logs"
        self.pool_dir = self.home / "indy-pool"
        self.chain_dir = self.home / "chain"
        self.tails_dir = self.home / "tails"
        self.descriptor_file = self.home / "descriptor.json"

    # -- what runs ------------------------------------------------------------------------
    @property
    def genesis_file(self) -> Path:
        return self.pool_dir / "pool_transactions_genesis"

    @property
    def tails_url(self) -> str:
        return self.settings.url(self.settings.tails.port)

    @property
    def rpc_url(self) -> str:
        return self.settings.url(self.settings.chain.port)

    @property
    def trustee_seed(self) -> str:
        return self.secrets.seed("pool-trustee").get_secret_value()

    def descriptor(self) -> NetworkDescriptor:
        """The network's half of the descriptor: where its parts answer. The authority adds the rest."""
        return NetworkDescriptor(
            indy=IndyNetworkRef(name=self.settings.pool.network_name, genesis_file=self.genesis_file),
            chain=EvmChainRef(rpc_url=self.rpc_url, chain_id=self.settings.chain.chain_id),
            tails_server_url=self.tails_url)

    def pool_specs(self) -> list[ProcessSpec]:
        return [
            ProcessSpec(name=f"indy-{n.name}", argv=n.argv, env=n.env, cwd=n.cwd,
                        log_file=n.log_file, ports=n.ports, stop_timeout_s=20)
            for n in node_processes(self.pool_dir, self.settings.paths.node_venv)
        ]

    @property
    def chain_state_file(self) -> Path:
        return self.chain_dir / "state.json"

    @property
    def chain_journal_file(self) -> Path:
        return self.chain_dir / "journal.jsonl"

    def chain_node_port(self) -> int:
        """anvil's internal port: that of the running node if there is one (settings made by another
        `erx` run may have picked another free port), else the configured one."""
        running = self.supervisor.record("chain")
        if running is not None and (port := port_of(running.argv)) is not None:
            return port
        return self.settings.chain.node_port

    def chain_spec(self, node_port: int | None = None) -> ProcessSpec:
        """anvil, on its internal port behind the journaling proxy (`chain_proxy_spec`)."""
        c = self.settings.chain
        port = node_port or self.chain_node_port()
        # fifo: lost transactions re-sent in journal order are mined in that order
        node = anvil_process(port, self.logs / "chain.log", name="chain", chain_id=c.chain_id,
                             block_time=c.block_time_s, gas_limit=c.gas_limit, state_file=self.chain_state_file,
                             state_interval=c.state_interval_s, host=self.settings.host, order="fifo")
        return ProcessSpec(name="chain", argv=node.argv, env=node.env, log_file=node.log_file, ports=[port])

    def chain_proxy_spec(self, node_port: int | None = None) -> ProcessSpec:
        """The journaling JSON-RPC proxy every client talks to, on the chain port (erx_chain.proxy)."""
        c = self.settings.chain
        proxy = proxy_process(c.port, node_port or self.chain_node_port(), self.chain_journal_file,
                              self.logs / "chain-proxy.log", host=self.settings.host,
                              hold_timeout=c.proxy_hold_timeout_s)
        return ProcessSpec(name="chain-proxy", argv=proxy.argv, env=proxy.env, log_file=proxy.log_file,
                           ports=[c.port])

    def tails_spec(self) -> ProcessSpec:
        t = self.settings.tails
        return ProcessSpec(
            name="tails",
            argv=[sys.executable, "-m", "erx_agents.tails_server", "--host", self.settings.host,
                  "--port", str(t.port), "--dir", str(self.tails_dir), "--max-bytes", str(t.max_file_bytes)],
            log_file=self.logs / "tails.log", ports=[t.port])

    def process_names(self) -> list[str]:
        return (["tails", "chain-proxy", "chain"]
                + [f"indy-Node{i}" for i in range(1, len(self.settings.pool.node_ports) + 1)])

    # -- up -------------------------------------------------------------------------------
    async def up(self) -> NetworkDescriptor:
        self._preflight()
        await asyncio.to_thread(ensure_node_venv, self.settings.paths.node_venv, self.settings.pool.base_python,
                                self.progress)
        if not self.genesis_file.exists():
            self.progress("generating the Indy pool: genesis, node keys, trustee and steward seeds")
            await asyncio.to_thread(self._init_pool)
        await asyncio.gather(self._start_pool(), self._start_chain(), self._start_tails())
        descriptor = self.descriptor()
        descriptor.save(self.descriptor_file)
        self.progress(f"network: descriptor written to {self.descriptor_file}")
        return descriptor

    def _preflight(self) -> None:
        if not self.settings.pool.base_python.exists():
            raise SetupError(
                f"Python 3.8 for the Indy nodes not found at {self.settings.pool.base_python}: install it "
                f"(pyenv install 3.8.18) or set ERX_POOL__BASE_PYTHON to a 3.8 interpreter.")
        for d in (self.home, self.logs, self.chain_dir, self.tails_dir):
            d.mkdir(parents=True, exist_ok=True)

    def _init_pool(self) -> None:
        p = self.settings.pool
        init_pool(self.pool_dir, self.settings.paths.node_venv, node_ports=p.node_ports,
                  client_ports=p.client_ports, network_name=p.network_name, trustee_seed=self.trustee_seed,
                  steward_seeds=[self.secrets.seed(f"pool-steward{i}").get_secret_value()
                                 for i in range(1, len(p.node_ports) + 1)],
                  host=self.settings.host)

    async def _start_pool(self) -> None:
        specs = self.pool_specs()
        started = [await self.launcher.start(s) for s in specs]
        if any(started):
            self.progress(f"indy pool: started {sum(started)} of {len(specs)} validators")
        ledger = await IndyLedger.open(self.genesis_file)
        try:
            async def quorum_reached() -> bool:
                status = await ledger.nodes_status(self.trustee_seed)
                return status.participating == status.total
            await self.launcher.until(specs, quorum_reached, self.settings.pool.ready_timeout_s, "indy pool")
        finally:
            await ledger.close()
        self.progress(f"indy pool: {len(specs)}/{len(specs)} validators participating")

    async def _start_chain(self) -> None:
        """anvil on its internal port, and the journaling proxy in front of it. The chain is healthy once
        the proxy answers: it holds every request until it has re-applied what a crash lost."""
        running = self.supervisor.record("chain")
        if running is not None and port_of(running.argv) == self.settings.chain.port:
            self.supervisor.stop("chain")  # started before the proxy existed, on its port: move it behind it
        node_port = self.chain_node_port()
        spec, proxy = self.chain_spec(node_port), self.chain_proxy_spec(node_port)
        if not self.supervisor.is_running(spec.name):
            state = prepare_state_file(self.chain_state_file)
            if state not in ("fresh", "loaded"):
                self.progress(f"chain: state file was damaged by a crash ({state})")
        running_proxy = self.supervisor.record(proxy.name)
        if running_proxy is not None and running_proxy.argv != proxy.argv:
            self.supervisor.stop(proxy.name)  # it points at another node port: restart it (its journal stays)
        await self.launcher.start(spec)
        await self.launcher.start(proxy)
        await self.launcher.until([spec, proxy], self._chain_answers, 60, "EVM node")
        self.progress(f"chain: EVM node answering at {self.rpc_url} (chain id {self.settings.chain.chain_id}, "
                      f"journaling proxy in front of anvil on port {node_port})")

    async def _start_tails(self) -> None:
        spec = self.tails_spec()
        await self.launcher.start(spec)
        await self.launcher.until([spec], lambda: http_ok(f"{self.tails_url}/health"), 30, "tails server")
        self.progress(f"tails: serving at {self.tails_url}")

    async def admit_authority(self, did: str, verkey: str, alias: str) -> None:
        """The network's trustee writes the health authority's DID as TRUSTEE (once): it may then onboard
        organisations (ENDORSER) and publish the national schema. In production the network's governance
        does this by its own procedure."""
        async with await IndyLedger.open(self.genesis_file) as ledger:
            # A new pool has no signed state to prove a read against until its first write.
            if await ledger.get_nym(did, require_state_proof=False) is None:
                await ledger.write_nym(self.trustee_seed, did, verkey, role="TRUSTEE", alias=alias)
                self.progress(f"indy pool: health authority DID {did} admitted as TRUSTEE")

    # -- down -----------------------------------------------------------------------------
    def down(self) -> list[str]:
        return self.launcher.stop_all(self.process_names())

    # -- status ---------------------------------------------------------------------------
    async def status(self, contract_address: str | None = None) -> dict[str, PoolStatus | ChainStatus | TailsStatus]:
        """`contract_address`: the token contract the authority deployed, named in the chain's status."""
        pool, chain, tails = await asyncio.gather(self._pool_status(), self._chain_status(contract_address),
                                                  self._tails_status())
        return {"indy-pool": pool, "chain": chain, "tails": tails}

    async def _pool_status(self) -> PoolStatus:
        total = len(self.settings.pool.node_ports)
        base = dict(genesis_file=str(self.genesis_file), validators=total)
        if not self.genesis_file.exists():
            return PoolStatus(healthy=False, detail="no pool yet: run ./erx up", participating=0, **base)
        try:
            ledger = await IndyLedger.open(self.genesis_file)
            try:
                st = await asyncio.wait_for(ledger.nodes_status(self.trustee_seed), 10)
            finally:
                await ledger.close()
        except Exception as exc:
            running = sum(self.supervisor.is_running(s) for s in (f"indy-Node{i}" for i in range(1, total + 1)))
            return PoolStatus(healthy=False, participating=0,
                              detail=f"pool not answering ({running}/{total} node processes running): {exc}", **base)
        return PoolStatus(healthy=st.participating == st.total, participating=st.participating,
                          detail=f"{st.participating}/{st.total} validators participating", **base)

    async def _chain_block_number(self) -> int:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            body = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
            async with http.post(self.rpc_url, json=body) as resp:
                return int((await resp.json())["result"], 16)

    async def _chain_answers(self) -> bool:
        await self._chain_block_number()
        return True

    async def _chain_proxy_health(self) -> dict:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.get(f"{self.rpc_url}/health") as resp:
                return await resp.json()

    async def _chain_status(self, contract_address: str | None = None) -> ChainStatus:
        base = dict(rpc_url=self.rpc_url, chain_id=self.settings.chain.chain_id)
        try:
            block = await self._chain_block_number()
        except Exception as exc:
            try:
                proxy = await self._chain_proxy_health()
                why = "the journaling proxy is waiting for anvil" if not proxy.get("ready") else "no answer"
            except Exception:
                why = "the journaling proxy is not answering"
            return ChainStatus(healthy=False, detail=f"EVM node not answering ({why}): "
                               f"{exc or type(exc).__name__}", **base)
        detail = f"block {block}" + (f", token contract {contract_address}" if contract_address else "")
        try:
            proxy = await self._chain_proxy_health()
            detail += f", {proxy['journaled']} transactions journaled"
            if last := proxy.get("reconciliations"):
                detail += f", last reconciliation re-sent {last[-1]['resent']}"
        except Exception:
            pass
        return ChainStatus(healthy=True, block_number=block, contract_address=contract_address, detail=detail,
                           **base)

    async def _tails_status(self) -> TailsStatus:
        try:
            ok = await http_ok(f"{self.tails_url}/health")
        except Exception as exc:
            return TailsStatus(healthy=False, url=self.tails_url, detail=f"not answering: {exc or type(exc).__name__}")
        return TailsStatus(healthy=ok, url=self.tails_url, detail="serving" if ok else "unhealthy")

