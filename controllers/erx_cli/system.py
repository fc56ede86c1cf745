"""A whole health system on one machine, composed of exactly the production parts: behind `./erx up`,
`./erx demo` and the integration tests.

    network (erx_cli.devnet)      pool, chain, tails                      <home>/network
    health authority              schema, token contract, register       <home>/authority
    organisations (erx_cli.org)   one home each: practice, pharmacies,   <home>/orgs/<name>
                                  the patient's wallet stand-in

`up()` walks the production path: the network writes its descriptor; the authority is admitted by the
network's trustee, publishes the schema and contract and completes the descriptor; each organisation
makes its own home from that descriptor and hands its join request to the authority, which onboards it;
then each organisation starts its own agent and controller. No file is shared between homes but the
public descriptor.
"""

from __future__ import annotations

import asyncio
import shutil

from eth_account.signers.local import LocalAccount

from erx_cli.authority import HealthAuthority
from erx_cli.devnet import DevNetwork
from erx_cli.launch import NetworkStatus, SetupError
from erx_cli.org import Organisation, OrgSettings, Storage
from erx_contracts.config import ChainConfig
from erx_core.acapy_admin import AcaPyAdmin
from erx_core.processes import ProcessRecord, ProcessSpec, Supervisor
from erx_core.progress import SILENT, Progress
from erx_core.settings import AgentSettings, Settings
from erx_core.staff import dev_person


class LocalSystem:
    def __init__(self, settings: Settings, progress: Progress = SILENT):
        self.settings = settings
        self.paths = settings.paths
        self.progress = progress
        self.network = DevNetwork(settings, progress)
        self.authority = HealthAuthority(self.paths.authority, settings.authority_name, progress)
        self._orgs: dict[str, Organisation] = {}
        self.supervisor = Supervisors(self)

    # -- the parts -----------------------------------------------------------------------------
    def org(self, name: str) -> Organisation:
        self.settings.agent(name)  # KeyError for a name not configured
        if name not in self._orgs:
            self._orgs[name] = Organisation(self.paths.org_home(name), self.progress)
        return self._orgs[name]

    def orgs(self) -> list[Organisation]:
        return [self.org(a.name) for a in self.settings.agents]

    def extra_org(self, agent: AgentSettings) -> Organisation:
        """A deployment for an agent outside the configured list (e.g. a test's own wallet), in its own
        home, joined to this system's network; not onboarded and not started."""
        org = Organisation(self.paths.org_home(agent.name), self.progress)
        wanted = self.org_settings(agent)
        if not org.initialised or org.settings != wanted:
            org.init(wanted, self.authority.descriptor())
        return org

    def org_settings(self, agent: AgentSettings) -> OrgSettings:
        s = self.settings
        return OrgSettings(name=agent.name, role=agent.role, label=agent.label, host=s.host,
                           inbound_port=agent.inbound_port, admin_port=agent.admin_port,
                           controller_port=agent.controller_port, storage=Storage(agent.storage),
                           postgres_port=agent.postgres_port, auto_respond=agent.auto_respond, dev_accounts=True,
                           checks=s.checks, offers=s.offers, webhooks=s.webhooks)

    # -- up -----------------------------------------------------------------------------------
    async def up(self) -> None:
        self._refuse_old_layout()
        self.paths.home.mkdir(parents=True, exist_ok=True)
        self.settings.save(self.paths.settings)
        base = await self.network.up()
        if not self.authority.initialised:
            self.authority.init(base)
        did, verkey = self.authority.did_and_verkey()
        await self.network.admit_authority(did, verkey, self.authority.name)
        descriptor = await self.authority.up()
        for agent in self.settings.agents:
            org = self.org(agent.name)
            wanted = self.org_settings(agent)
            if not org.initialised or org.settings != wanted:
                org.init(wanted, descriptor)
            elif org.network() != descriptor:
                org.update_network(descriptor)
            request = org.join_request()
            if request is not None:
                await self.authority.onboard(request)
        await asyncio.gather(*(org.up() for org in self.orgs()))
        self.progress("network is up")

    def _refuse_old_layout(self) -> None:
        if (self.paths.home / "indy-pool").exists():
            raise SetupError(f"{self.paths.home} was made by an older erx (one network, one secrets file): "
                             "run `./erx reset --yes` once")

    # -- down / reset -------------------------------------------------------------------------
    def down(self) -> list[str]:
        stopped: list[str] = []
        for org in self.orgs():
            stopped += org.down()
        return stopped + self.network.down()

    def reset(self) -> None:
        """Stop everything and wipe all state (ledgers, wallets, keys). Installed venvs stay."""
        self.down()
        if self.paths.orgs.exists():
            for home in self.paths.orgs.iterdir():
                Organisation(home).wipe()
        if self.paths.home.exists():
            for child in self.paths.home.iterdir():
                if child.resolve() == self.settings.venvs.resolve():
                    continue
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    # -- status -------------------------------------------------------------------------------
    async def status(self) -> NetworkStatus:
        contract = (self.authority.descriptor().chain.token_contract
                    if self.authority.descriptor_file.exists() else None)
        network, *orgs = await asyncio.gather(self.network.status(contract), *(
            org.status() for org in self.orgs() if org.initialised))
        components = dict(network)
        for org_status in orgs:
            components.update(org_status)
        missing = [a.name for a in self.settings.agents if not self.org(a.name).initialised]
        healthy = all(c.healthy for c in components.values()) and not missing
        return NetworkStatus(healthy=healthy, components=components, pages=self.pages(), api=self.api_documents())

    # -- what tests, the demo and the bench ask of the system ---------------------------------------
    def controller_url(self, name: str) -> str:
        return self.settings.url(self.settings.agent(name).controller_port)

    def page_url(self, name: str) -> str:
        return self.controller_url(name) + "/"

    def pages(self) -> dict[str, str]:
        pages: dict[str, str] = {}
        for a in self.settings.agents:
            pages[a.name if a.role in pages else a.role] = self.page_url(a.name)
        return pages

    def api_documents(self) -> dict[str, str]:
        documents: dict[str, str] = {}
        for a in self.settings.agents:
            if a.role != "patient":
                documents[a.name if a.role in documents else a.role] = self.controller_url(a.name) + "/api/openapi.json"
        return documents

    def page_lines(self) -> list[str]:
        """What `erx up` prints: each page, who signs in to it, and where each password is kept (never the
        password): the dev-default staff accounts of an organisation, the wallet's one password."""
        lines = []
        for a in self.settings.agents:
            org = self.org(a.name)
            if a.role == "patient":
                who = f"password \"{org.secrets.page_password_name(a.name)}\""
            else:
                who = ", ".join(f"{s.username} ({s.role}): \"{org.secrets.staff_password_name(a.name, s.username)}\""
                                for s in org.dev_staff())
            lines.append(f"  {a.name:<16} {self.page_url(a.name):<28} {who}  in {org.secrets.path}")
        return lines

    def operator_token(self, name: str):
        return self.org(name).operator_token()

    def staff_member(self, name: str) -> str | None:
        """The dev-default staff member the demo and the tests act as at organisation `name` (None: a wallet)."""
        return dev_person(self.settings.agent(name).role)

    def staff_password(self, name: str, username: str):
        """A dev-default staff account's first password (for the browser tests)."""
        return self.org(name).secrets.staff_password(name, username)

    def admin(self, name: str) -> AcaPyAdmin:
        return self.org(name).admin()

    def chain_account(self, name: str) -> LocalAccount:
        if self.settings.agent(name).role not in ("doctor", "pharmacy"):
            raise KeyError(f"{name} has no chain account")
        return self.org(name).chain_key()

    def chain_config(self) -> ChainConfig:
        if self.authority.descriptor_file.exists():
            return self.authority.descriptor().chain.client_config(tx_timeout=self.settings.chain.tx_timeout_s)
        return self.network.descriptor().chain.client_config(tx_timeout=self.settings.chain.tx_timeout_s)

    @property
    def genesis_file(self):
        return self.network.genesis_file

    @property
    def rpc_url(self) -> str:
        return self.network.rpc_url

    @property
    def tails_url(self) -> str:
        return self.network.tails_url

    @property
    def prescription_schema_id(self) -> str:
        return self.authority.descriptor().prescription_schema_id

    def log_file(self, process: str):
        """Where a process of this system logs: an organisation's home for its agent and controller."""
        owner = self.supervisor.owner(process)
        return owner.logs / f"{process}.log"


class Supervisors:
    """The system's processes across its deployments' homes, by process name: `agent-X` and
    `controller-X` live in organisation X's home, everything else in the network's."""

    def __init__(self, system: LocalSystem):
        self.system = system

    def owner(self, process: str):
        for prefix in ("agent-", "controller-"):
            if process.startswith(prefix):
                name = process[len(prefix):]
                if any(a.name == name for a in self.system.settings.agents):
                    return self.system.org(name)
        return self.system.network

    def _of(self, process: str) -> Supervisor:
        return self.owner(process).supervisor

    def record(self, name: str) -> ProcessRecord | None:
        return self._of(name).record(name)

    def is_running(self, name: str) -> bool:
        return self._of(name).is_running(name)

    def start(self, spec: ProcessSpec) -> ProcessRecord:
        return self._of(spec.name).start(spec)

    def stop(self, name: str, timeout_s: float = 15.0) -> bool:
        return self._of(name).stop(name, timeout_s=timeout_s)

    def running(self) -> list[ProcessRecord]:
        records = self.system.network.supervisor.running()
        for org in self.system.orgs():
            if org.initialised:
                records += org.supervisor.running()
        return records
