"""The local network: Indy pool, EVM node, tails server and ACA-Py agents, as native processes.

`Network.up()` starts what is not running yet and waits until each part is healthy, in dependency
order (pool, chain and tails in parallel; then organisations' DIDs on the pool; then agents).
`down()` stops everything by pid and keeps data, so the next `up()` resumes on the same ledgers and
wallets. `status()` reports each component's health without starting anything.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import aiohttp
from eth_account.signers.local import LocalAccount
from pydantic import BaseModel, SerializeAsAny

from erx_agents.acapy import AgentLaunch
from erx_chain.accounts import DevAccounts
from erx_chain.keystore import load_or_create
from erx_chain.node import anvil_process, port_of, prepare_state_file, proxy_process
from erx_contracts.client import PrescriptionTokenClient
from erx_contracts.config import ChainConfig
from erx_core.acapy_admin import AcaPyAdmin
from erx_core.processes import ProcessSpec, Supervisor
from erx_core.progress import SILENT, Progress
from erx_core.secrets import SecretStore
from erx_core.settings import AgentSettings, Settings
from erx_indy.ledger import IndyLedger, did_from_seed
from erx_indy.node_venv import ensure_node_venv
from erx_indy.pool import init_pool, node_processes
from erx_schemas.prescription import ATTRIBUTES, SCHEMA_NAME, SCHEMA_VERSION


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


class Deployment(BaseModel):
    """Where the token contract lives on the local chain (written once by `up`)."""

    contract_address: str
    admin: str


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


class Network:
    def __init__(self, settings: Settings, progress: Progress = SILENT):
        self.settings = settings
        self.paths = settings.paths
        self.progress = progress
        self.secrets = SecretStore(self.paths.secrets)
        self.supervisor = Supervisor(self.paths.run, settings.host)
        self._chain_keys: dict[str, LocalAccount] = {}

    # -- what runs ------------------------------------------------------------------------
    @property
    def genesis_file(self) -> Path:
        return self.paths.pool / "pool_transactions_genesis"

    @property
    def tails_url(self) -> str:
        return self.settings.url(self.settings.tails.port)

    @property
    def rpc_url(self) -> str:
        return self.settings.url(self.settings.chain.port)

    def pool_specs(self) -> list[ProcessSpec]:
        return [
            ProcessSpec(name=f"indy-{n.name}", argv=n.argv, env=n.env, cwd=n.cwd,
                        log_file=n.log_file, ports=n.ports, stop_timeout_s=20)
            for n in node_processes(self.paths.pool, self.paths.node_venv)
        ]

    @property
    def chain_state_file(self) -> Path:
        return self.paths.chain / "state.json"

    @property
    def deployment_file(self) -> Path:
        return self.paths.chain / "deployment.json"

    @property
    def chain_journal_file(self) -> Path:
        return self.paths.chain / "journal.jsonl"

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
        node = anvil_process(port, self.paths.logs / "chain.log", name="chain", chain_id=c.chain_id,
                             block_time=c.block_time_s, gas_limit=c.gas_limit, state_file=self.chain_state_file,
                             state_interval=c.state_interval_s, host=self.settings.host, order="fifo")
        return ProcessSpec(name="chain", argv=node.argv, env=node.env, log_file=node.log_file, ports=[port])

    def chain_proxy_spec(self, node_port: int | None = None) -> ProcessSpec:
        """The journaling JSON-RPC proxy every client talks to, on the chain port (erx_chain.proxy)."""
        c = self.settings.chain
        proxy = proxy_process(c.port, node_port or self.chain_node_port(), self.chain_journal_file,
                              self.paths.logs / "chain-proxy.log", host=self.settings.host,
                              hold_timeout=c.proxy_hold_timeout_s)
        return ProcessSpec(name="chain-proxy", argv=proxy.argv, env=proxy.env, log_file=proxy.log_file,
                           ports=[c.port])

    def chain_key(self, owner: str) -> LocalAccount:
        """`owner`'s own chain key (the health authority's, or an organisation agent's): made at random
        for this network on first use and kept as an encrypted keystore (erx_chain.keystore), its password
        in the secret store. Never derived from a public mnemonic."""
        if owner not in self._chain_keys:
            password = self.secrets.get(f"chain-keystore-password:{owner}")
            self._chain_keys[owner] = load_or_create(self.paths.chain / "keys" / f"{owner}.json",
                                                     password.get_secret_value())
        return self._chain_keys[owner]

    def chain_accounts(self) -> DevAccounts:
        agents = self.settings.agents
        return DevAccounts(authority=self.chain_key(self.settings.authority_name),
                           doctors=tuple(self.chain_key(a.name) for a in agents if a.role == "doctor"),
                           pharmacies=tuple(self.chain_key(a.name) for a in agents if a.role == "pharmacy"))

    def chain_account(self, agent_name: str) -> LocalAccount:
        """The chain account an organisation's controller sends transactions from."""
        agent = self.settings.agent(agent_name)
        if agent.role not in ("doctor", "pharmacy"):
            raise KeyError(f"{agent_name} ({agent.role}) has no chain account")
        return self.chain_key(agent_name)

    def chain_config(self, contract_address: str | None = None) -> ChainConfig:
        c = self.settings.chain
        if contract_address is None and self.deployment_file.exists():
            contract_address = Deployment.model_validate_json(self.deployment_file.read_text()).contract_address
        return ChainConfig(rpc_url=self.rpc_url, chain_id=c.chain_id, contract_address=contract_address,
                           tx_timeout=c.tx_timeout_s)

    def tails_spec(self) -> ProcessSpec:
        t = self.settings.tails
        return ProcessSpec(
            name="tails",
            argv=[sys.executable, "-m", "erx_agents.tails_server", "--host", self.settings.host,
                  "--port", str(t.port), "--dir", str(self.paths.tails), "--max-bytes", str(t.max_file_bytes)],
            log_file=self.paths.logs / "tails.log", ports=[t.port])

    def agent_launch(self, agent: AgentSettings) -> AgentLaunch:
        return AgentLaunch(
            name=agent.name, label=agent.label, host=self.settings.host,
            inbound_port=agent.inbound_port, admin_port=agent.admin_port,
            webhook_url=f"{self.settings.url(agent.controller_port)}/webhooks",
            genesis_file=self.genesis_file, tails_url=self.tails_url,
            home=self.paths.agent_home(agent.name),
            wallet_key=self.secrets.wallet_key(agent.name),
            admin_api_key=self.secrets.admin_api_key(agent.name),
            webhook_key=self.secrets.webhook_key(agent.name),
            seed=self.secrets.seed(agent.name) if agent.public_did else None,
        )

    def agent_spec(self, agent: AgentSettings) -> ProcessSpec:
        launch = self.agent_launch(agent)
        aca_py = Path(sys.executable).parent / "aca-py"
        return ProcessSpec(name=f"agent-{agent.name}", argv=launch.argv(aca_py), env=launch.env(),
                           log_file=self.paths.logs / f"agent-{agent.name}.log",
                           ports=[agent.inbound_port, agent.admin_port])

    def controller_spec(self, agent: AgentSettings) -> ProcessSpec:
        return ProcessSpec(name=f"controller-{agent.name}",
                           argv=[sys.executable, "-m", "erx_roles.serve", "--agent", agent.name,
                                 "--settings", str(self.paths.settings)],
                           log_file=self.paths.logs / f"controller-{agent.name}.log", ports=[agent.controller_port])

    def controller_url(self, agent_name: str) -> str:
        return self.settings.url(self.settings.agent(agent_name).controller_port)

    def page_url(self, agent_name: str) -> str:
        """The agent's web page (doctor's practice, pharmacy counter, patient wallet), served by its controller."""
        return self.controller_url(agent_name) + "/"

    def pages(self) -> dict[str, str]:
        pages: dict[str, str] = {}
        for a in self.settings.agents:
            pages[a.name if a.role in pages else a.role] = self.page_url(a.name)
        return pages

    def api_documents(self) -> dict[str, str]:
        """Where each organisation's REST API is described (OpenAPI 3); the patient's wallet has none."""
        documents: dict[str, str] = {}
        for a in self.settings.agents:
            if a.role != "patient":
                documents[a.name if a.role in documents else a.role] = self.controller_url(a.name) + "/api/openapi.json"
        return documents

    def page_lines(self) -> list[str]:
        """What `erx up` prints: each page, and where its sign-in password is kept (never the password)."""
        lines = []
        for a in self.settings.agents:
            name = self.secrets.page_password_name(a.name, a.role)
            lines.append(f"  {a.name:<16} {self.page_url(a.name):<28} password: \"{name}\" in {self.paths.secrets}")
        return lines

    def admin(self, agent_name: str) -> AcaPyAdmin:
        agent = self.settings.agent(agent_name)
        return AcaPyAdmin(self.settings.url(agent.admin_port), self.secrets.admin_api_key(agent.name))

    @property
    def trustee_seed(self) -> str:
        return self.secrets.seed("pool-trustee").get_secret_value()

    @property
    def prescription_schema_id(self) -> str:
        """The national prescription schema, published by the health authority."""
        if self.settings.prescription_schema_id:
            return self.settings.prescription_schema_id
        did, _ = did_from_seed(self.secrets.seed(self.settings.authority_name).get_secret_value())
        return f"{did}:2:{SCHEMA_NAME}:{SCHEMA_VERSION}"

    def organisations(self) -> list[str]:
        """Everyone who needs a public DID: the health authority and every organisation's agent."""
        return [self.settings.authority_name] + [a.name for a in self.settings.agents if a.public_did]

    # -- up -------------------------------------------------------------------------------
    async def up(self) -> None:
        self._preflight()
        await asyncio.to_thread(ensure_node_venv, self.paths.node_venv, self.settings.pool.base_python,
                                self.progress)
        if not self.genesis_file.exists():
            self.progress("generating the Indy pool: genesis, node keys, trustee and steward seeds")
            await asyncio.to_thread(self._init_pool)
        await asyncio.gather(self._start_pool(), self._start_chain(), self._start_tails())
        await asyncio.gather(self._onboard_organisations(), self._deploy_token_contract())
        await asyncio.gather(*(self._start_agent(a) for a in self.settings.agents))
        await asyncio.gather(*(self._start_controller(a) for a in self.settings.agents))
        self.progress("network is up")

    def _preflight(self) -> None:
        if not self.settings.pool.base_python.exists():
            raise SetupError(
                f"Python 3.8 for the Indy nodes not found at {self.settings.pool.base_python}: install it "
                f"(pyenv install 3.8.18) or set ERX_POOL__BASE_PYTHON to a 3.8 interpreter.")
        for d in (self.paths.home, self.paths.logs, self.paths.chain, self.paths.tails, self.paths.agents):
            d.mkdir(parents=True, exist_ok=True)
        self.settings.save(self.paths.settings)

    def _init_pool(self) -> None:
        p = self.settings.pool
        init_pool(self.paths.pool, self.paths.node_venv, node_ports=p.node_ports, client_ports=p.client_ports,
                  network_name=p.network_name, trustee_seed=self.trustee_seed,
                  steward_seeds=[self.secrets.seed(f"pool-steward{i}").get_secret_value() for i in range(1, len(p.node_ports) + 1)],
                  host=self.settings.host)

    async def _start(self, spec: ProcessSpec) -> bool:
        """Start `spec` unless it runs already; True if it was started now."""
        was_running = self.supervisor.is_running(spec.name)
        self.supervisor.start(spec)
        return not was_running

    async def _until(self, specs: list[ProcessSpec], check, timeout_s: float, what: str) -> None:
        """Wait until `check()` passes, failing fast (with the log tail) if one of the processes dies."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            for spec in specs:
                if not self.supervisor.is_running(spec.name):
                    raise SetupError(f"{spec.name} exited while starting. Last log lines ({spec.log_file}):\n"
                                     + _tail(spec.log_file))
            try:
                if await check():
                    return
            except Exception:  # not up yet: any error just means "try again"
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise SetupError(f"{what} not healthy after {timeout_s:.0f} s; see {specs[0].log_file}:\n"
                                 + _tail(specs[0].log_file))
            await asyncio.sleep(0.25)

    async def _start_pool(self) -> None:
        specs = self.pool_specs()
        started = [await self._start(s) for s in specs]
        if any(started):
            self.progress(f"indy pool: started {sum(started)} of {len(specs)} validators")
        ledger = await IndyLedger.open(self.genesis_file)
        try:
            async def quorum_reached() -> bool:
                status = await ledger.nodes_status(self.trustee_seed)
                return status.participating == status.total
            await self._until(specs, quorum_reached, self.settings.pool.ready_timeout_s, "indy pool")
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
        await self._start(spec)
        await self._start(proxy)
        await self._until([spec, proxy], self._chain_answers, 60, "EVM node")
        self.progress(f"chain: EVM node answering at {self.rpc_url} (chain id {self.settings.chain.chain_id}, "
                      f"journaling proxy in front of anvil on port {node_port})")

    async def _start_tails(self) -> None:
        spec = self.tails_spec()
        await self._start(spec)
        await self._until([spec], self._tails_healthy, 30, "tails server")
        self.progress(f"tails: serving at {self.tails_url}")

    async def _onboard_organisations(self) -> None:
        """Write each organisation's DID to the pool as ENDORSER, signed by the trustee (once)."""
        ledger = await IndyLedger.open(self.genesis_file)
        try:
            for org in self.organisations():
                did, verkey = did_from_seed(self.secrets.seed(org).get_secret_value())
                # A new pool has no signed state to prove a read against until its first write.
                if await ledger.get_nym(did, require_state_proof=False) is None:
                    await ledger.write_nym(self.trustee_seed, did, verkey, role="ENDORSER", alias=org)
                    self.progress(f"indy pool: {org} DID {did} written as ENDORSER")
            await self._publish_prescription_schema(ledger)
        finally:
            await ledger.close()

    async def _publish_prescription_schema(self, ledger: IndyLedger) -> None:
        if self.settings.prescription_schema_id or await ledger.get_schema(self.prescription_schema_id):
            return
        seed = self.secrets.seed(self.settings.authority_name).get_secret_value()
        schema_id = await ledger.write_schema(seed, SCHEMA_NAME, SCHEMA_VERSION, ATTRIBUTES)
        self.progress(f"indy pool: health authority published the prescription schema {schema_id}")

    async def _deploy_token_contract(self) -> None:
        """Deploy the token contract once (the health authority is its admin) and grant roles:
        doctors may create tokens, pharmacies may spend them."""
        accounts = self.chain_accounts()
        if self.deployment_file.exists():
            deployment = Deployment.model_validate_json(self.deployment_file.read_text())
            if deployment.admin.lower() != accounts.authority.address.lower():
                raise SetupError(
                    f"the token contract at {deployment.contract_address} is governed by {deployment.admin}, not by "
                    f"this network's health authority key {accounts.authority.address} (a network made before "
                    "per-network chain keys, whose keys came from the public test mnemonic): run `./erx reset --yes`")
            client = await PrescriptionTokenClient.connect(self.chain_config(deployment.contract_address),
                                                           accounts.authority)
        else:
            client = await PrescriptionTokenClient.deploy(self.chain_config(), accounts.authority)
            deployment = Deployment(contract_address=client.contract_address, admin=accounts.authority.address)
            self.deployment_file.write_text(deployment.model_dump_json(indent=2))
            self.progress(f"chain: token contract deployed at {client.contract_address}")
        try:
            for doctor in accounts.doctors:
                if not await client.is_issuer(doctor.address):
                    await client.add_issuer(doctor.address)
            for pharmacy in accounts.pharmacies:
                if not await client.is_dispenser(pharmacy.address):
                    await client.add_dispenser(pharmacy.address)
        finally:
            await client.close()

    async def _start_agent(self, agent: AgentSettings) -> None:
        spec = self.agent_spec(agent)
        await self._start(spec)
        async with self.admin(agent.name) as admin:
            await self._until([spec], admin.is_ready, 60, f"agent {agent.name}")
            did = await admin.public_did() if agent.public_did else None
        self.progress(f"agent-{agent.name}: ready at {self.settings.url(agent.admin_port)}"
                      + (f", public DID {did.did}" if did else ""))

    async def _start_controller(self, agent: AgentSettings) -> None:
        spec = self.controller_spec(agent)
        await self._start(spec)
        await self._until([spec], lambda: self._http_ok(f"{self.controller_url(agent.name)}/health"), 60,
                          f"controller {agent.name}")
        self.progress(f"controller-{agent.name}: serving at {self.controller_url(agent.name)}")

    @staticmethod
    async def _http_ok(url: str) -> bool:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.get(url) as resp:
                return resp.status == 200

    # -- down / reset ---------------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop every process this network started (agents first, the pool last). Data is kept."""
        order = ([f"controller-{a.name}" for a in self.settings.agents]
                 + [f"agent-{a.name}" for a in self.settings.agents] + ["tails", "chain-proxy", "chain"]
                 + [f"indy-Node{i}" for i in range(1, len(self.settings.pool.node_ports) + 1)])
        stopped = [name for name in order if self.supervisor.stop(name, timeout_s=20)]
        # anything else recorded (e.g. a component removed from the settings since) goes too
        stopped += [r.name for r in self.supervisor.running() if self.supervisor.stop(r.name)]
        return stopped

    def reset(self) -> None:
        """Stop everything and wipe all state (ledgers, wallets, keys). Installed venvs stay."""
        self.down()
        if self.paths.home.exists():
            for child in self.paths.home.iterdir():
                if child.resolve() == self.settings.venvs.resolve():
                    continue
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    # -- status ---------------------------------------------------------------------------
    async def status(self) -> NetworkStatus:
        results = await asyncio.gather(
            self._pool_status(), self._chain_status(), self._tails_status(),
            *(self._agent_status(a) for a in self.settings.agents),
            *(self._controller_status(a) for a in self.settings.agents))
        names = (["indy-pool", "chain", "tails"] + [f"agent-{a.name}" for a in self.settings.agents]
                 + [f"controller-{a.name}" for a in self.settings.agents])
        components = dict(zip(names, results))
        return NetworkStatus(healthy=all(c.healthy for c in components.values()), components=components,
                             pages=self.pages(), api=self.api_documents())

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

    async def _chain_status(self) -> ChainStatus:
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
        contract = self.chain_config().contract_address
        detail = f"block {block}" + (f", token contract {contract}" if contract else ", token contract not deployed yet")
        try:
            proxy = await self._chain_proxy_health()
            detail += f", {proxy['journaled']} transactions journaled"
            if last := proxy.get("reconciliations"):
                detail += f", last reconciliation re-sent {last[-1]['resent']}"
        except Exception:
            pass
        return ChainStatus(healthy=True, block_number=block, contract_address=contract, detail=detail, **base)

    async def _tails_healthy(self) -> bool:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.get(f"{self.tails_url}/health") as resp:
                return resp.status == 200

    async def _tails_status(self) -> TailsStatus:
        try:
            ok = await self._tails_healthy()
        except Exception as exc:
            return TailsStatus(healthy=False, url=self.tails_url, detail=f"not answering: {exc or type(exc).__name__}")
        return TailsStatus(healthy=ok, url=self.tails_url, detail="serving" if ok else "unhealthy")

    async def _agent_status(self, agent: AgentSettings) -> AgentStatus:
        admin_url = self.settings.url(agent.admin_port)
        async with self.admin(agent.name) as admin:
            if not await admin.is_ready():
                return AgentStatus(healthy=False, admin_url=admin_url, detail="admin API not ready or not running")
            did = await admin.public_did()
        if agent.public_did and did is None:
            return AgentStatus(healthy=False, admin_url=admin_url, detail="ready, but has no public DID")
        return AgentStatus(healthy=True, admin_url=admin_url, public_did=did.did if did else None,
                           detail="ready" + (f", public DID {did.did}" if did else " (holder, no public DID)"))


    async def _controller_status(self, agent: AgentSettings) -> ControllerStatus:
        url = self.controller_url(agent.name)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
                async with http.get(f"{url}/health") as resp:
                    ok = resp.status == 200
                    health = await resp.json() if ok else {}
        except Exception as exc:
            return ControllerStatus(healthy=False, url=url, detail=f"not answering: {exc or type(exc).__name__}")
        if not ok:
            return ControllerStatus(healthy=False, url=url, detail="unhealthy")
        attention = health.get("needs_attention") or {}
        detail = f"{agent.role} controller serving"
        if attention:  # serving, but records the operator must look at (see the controller's log)
            detail += f"; {len(attention)} record(s) need attention: " + "; ".join(
                f"{record_id}: {why}" for record_id, why in list(attention.items())[:5])
        return ControllerStatus(healthy=True, url=url, detail=detail, needs_attention=attention)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def status_json(status: NetworkStatus) -> str:
    return json.dumps(status.model_dump(mode="json"), indent=2)
