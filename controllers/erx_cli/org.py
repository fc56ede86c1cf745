"""One organisation's deployment: a practice, a pharmacy, or a patient's wallet stand-in.

`erx org init <role> <name> --network <descriptor>` makes a home holding only this organisation's own
keys and settings:

    org.json            its settings (role, ports, public endpoint, storage)
    network.json        the network descriptor it joined (public), genesis.txn its pool's genesis
    secrets.json        its secrets, mode 0600: DID seed, wallet key, admin/API/webhook keys, the dev-default
                        staff accounts' first passwords (or the wallet's password), session key, chain
                        keystore password, database password
    chain-key.json      its chain account, an encrypted keystore (practices and pharmacies)
    join-request.json   what it hands the health authority: role, name, public DID, verkey, chain address
    agent/ controller.db postgres/ logs/ run/

`erx org up | down | status` runs its agent and controller (and its PostgreSQL cluster, when its
storage is PostgreSQL) against the descriptor's network, and nothing else.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from enum import StrEnum
from pathlib import Path

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from erx_agents.acapy import AgentLaunch, WalletStorage
from erx_chain.keystore import load_or_create
from erx_cli.authority import NAME_PATTERN, JoinRequest
from erx_cli.launch import AgentStatus, ControllerStatus, Launcher, SetupError, http_ok
from erx_core.acapy_admin import AcaPyAdmin
from erx_core.config import AgentLink, ChainAccess, ControllerConfig, StoreLocation
from erx_core.descriptor import NetworkDescriptor
from erx_core.postgres import PostgresCluster, cluster_directory
from erx_core.processes import ProcessSpec
from erx_core.progress import SILENT, Progress
from erx_core.secrets import SecretStore
from erx_core.settings import CheckSettings, OfferSettings, Role
from erx_core.staff import StaffCreate, StaffRole, StaffSeed, dev_accounts
from erx_core.webhooks import WebhookSettings
from erx_indy.ledger import IndyLedger, did_from_seed


class Storage(StrEnum):
    SQLITE = "sqlite"      # embedded: one file per wallet and per controller (the default)
    POSTGRES = "postgres"  # the agent's askar wallet and the controller's records in PostgreSQL


class OrgSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    role: Role
    label: str = Field(min_length=1, max_length=200)
    host: str = "127.0.0.1"
    inbound_port: int = Field(gt=0, lt=65536)
    admin_port: int = Field(gt=0, lt=65536)
    controller_port: int = Field(gt=0, lt=65536)
    # Where wallets reach the agent (DIDComm) and people the controller (pages, short links, QR codes).
    # Behind a reverse proxy with TLS in production; by default the bound address.
    public_endpoint: str | None = Field(default=None, pattern=r"^https?://")
    public_url: str | None = Field(default=None, pattern=r"^https?://")
    storage: Storage = Storage.SQLITE
    postgres_port: int | None = Field(default=None, gt=0, lt=65536, description="the local cluster's port")
    auto_respond: bool = True  # wallet stand-in only
    # the dev prescriber / pharmacist besides the operator (`./erx up`, the tests, `org init --dev-accounts`);
    # a real organisation starts with its operator only, who adds its people (`erx staff add`)
    dev_accounts: bool = False
    checks: CheckSettings = CheckSettings()
    offers: OfferSettings = OfferSettings()
    webhooks: WebhookSettings = WebhookSettings()

    @property
    def public_did(self) -> bool:
        return self.role != "patient"

    @property
    def agent_endpoint(self) -> str:
        return self.public_endpoint or f"http://{self.host}:{self.inbound_port}"

    @property
    def controller_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.controller_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    def ports(self) -> list[int]:
        return [self.inbound_port, self.admin_port, self.controller_port] + (
            [self.postgres_port] if self.postgres_port else [])


class Organisation:
    def __init__(self, home: Path, progress: Progress = SILENT):
        self.home, self.progress = home, progress
        self.settings_file = home / "org.json"
        self.network_file = home / "network.json"
        self.genesis_file = home / "genesis.txn"
        self.join_request_file = home / "join-request.json"
        self.controller_config_file = home / "controller.json"
        self.logs = home / "logs"
        self.secrets = SecretStore(home / "secrets.json")
        self._settings: OrgSettings | None = None
        self._launcher: Launcher | None = None

    # -- init ------------------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return self.settings_file.exists()

    def init(self, settings: OrgSettings, network: NetworkDescriptor) -> JoinRequest | None:
        """Make the home: settings, the network it joins, its own keys; returns its join request (a patient's
        wallet has none). Idempotent for the same settings."""
        network.require_complete()
        if settings.storage == Storage.POSTGRES and settings.postgres_port is None:
            raise SetupError(f"{settings.name}: PostgreSQL storage needs a postgres_port for its local cluster")
        self.home.mkdir(parents=True, exist_ok=True)
        self.settings_file.write_text(settings.model_dump_json(indent=2))
        self._settings = settings
        network.save(self.network_file)
        self.genesis_file.write_text(network.indy.genesis_text())
        self._make_secrets()
        return self.write_join_request()

    def _make_secrets(self) -> None:
        """Every secret this organisation will use, made now so the home is complete after `init`."""
        s, secrets = self.settings, self.secrets
        for make in (secrets.wallet_key, secrets.admin_api_key, secrets.webhook_key, secrets.controller_api_key,
                     secrets.session_key):
            make(s.name)
        if s.role == "patient":
            secrets.page_password(s.name, s.role)
        for account in self.dev_staff():
            secrets.staff_password(s.name, account.username)

    def dev_staff(self) -> list[StaffCreate]:
        """The staff accounts the organisation starts with (its controller creates them at its first start):
        an operator, and with `dev_accounts` a prescriber or pharmacist, each with a random password in
        `secrets.json`."""
        accounts = dev_accounts(self.settings.role, self.settings.name)
        return accounts if self.settings.dev_accounts else [a for a in accounts if a.role == StaffRole.OPERATOR]

    def staff_seeds(self) -> list[StaffSeed]:
        return [StaffSeed(**account.model_dump(), password=self.secrets.staff_password(self.name, account.username))
                for account in self.dev_staff()]

    def update_network(self, network: NetworkDescriptor) -> None:
        """The authority published a new descriptor (e.g. after a dev network reset): join that one."""
        network.require_complete()
        network.save(self.network_file)
        self.genesis_file.write_text(network.indy.genesis_text())

    @property
    def settings(self) -> OrgSettings:
        if self._settings is None:
            if not self.initialised:
                raise SetupError(f"no organisation in {self.home}: run `erx org init` first")
            self._settings = OrgSettings.model_validate_json(self.settings_file.read_text())
        return self._settings

    @property
    def name(self) -> str:
        return self.settings.name

    def network(self) -> NetworkDescriptor:
        return NetworkDescriptor.load(self.network_file)

    @property
    def launcher(self) -> Launcher:
        if self._launcher is None:
            self._launcher = Launcher(self.home / "run", self.settings.host, self.progress)
        return self._launcher

    @property
    def supervisor(self):
        return self.launcher.supervisor

    # -- its own keys --------------------------------------------------------------------------------
    def did_and_verkey(self) -> tuple[str, str]:
        return did_from_seed(self.secrets.seed(self.name).get_secret_value())

    def chain_key(self):
        password = self.secrets.get(f"chain-keystore-password:{self.name}").get_secret_value()
        return load_or_create(self.home / "chain-key.json", password)

    def write_join_request(self) -> JoinRequest | None:
        s = self.settings
        if not s.public_did:
            return None
        did, verkey = self.did_and_verkey()
        request = JoinRequest(role=s.role, name=s.name, label=s.label, did=did, verkey=verkey,
                              chain_address=self.chain_key().address)
        self.join_request_file.write_text(request.model_dump_json(indent=2))
        return request

    def join_request(self) -> JoinRequest | None:
        return JoinRequest.load(self.join_request_file) if self.join_request_file.exists() else None

    def operator_token(self) -> SecretStr:
        return self.secrets.controller_api_key(self.name)

    def admin(self) -> AcaPyAdmin:
        return AcaPyAdmin(self.settings.admin_url, self.secrets.admin_api_key(self.name))

    # -- storage -----------------------------------------------------------------------------------
    def postgres(self) -> PostgresCluster | None:
        s = self.settings
        if s.storage != Storage.POSTGRES:
            return None
        # the server runs as the `postgres` OS user, which may not reach this home (see erx_core.postgres)
        return PostgresCluster(cluster_directory(self.home), s.postgres_port,
                               self.secrets.get(f"postgres-superuser-password:{self.name}"), host=s.host)

    def _db_user(self) -> tuple[str, SecretStr]:
        return f"erx_{self.name.replace('-', '_')}", self.secrets.get(f"postgres-password:{self.name}")

    def wallet_storage(self) -> WalletStorage | None:
        if self.settings.storage != Storage.POSTGRES:
            return None
        user, password = self._db_user()
        return WalletStorage(host=self.settings.host, port=self.settings.postgres_port, account=user,
                             password=password)

    def store_location(self) -> StoreLocation:
        cluster = self.postgres()
        if cluster is None:
            return StoreLocation(sqlite_file=self.home / "controller.db")
        user, password = self._db_user()
        return StoreLocation(postgres_dsn=SecretStr(cluster.dsn(f"{user}_records", user,
                                                                password.get_secret_value())))

    # -- processes ---------------------------------------------------------------------------------
    def agent_launch(self) -> AgentLaunch:
        s, network = self.settings, self.network()
        return AgentLaunch(
            name=s.name, label=s.label, host=s.host, inbound_port=s.inbound_port, admin_port=s.admin_port,
            public_endpoint=s.agent_endpoint,
            webhook_url=f"http://{s.host}:{s.controller_port}/webhooks",
            genesis_file=self.genesis_file, tails_url=network.tails_server_url, home=self.home / "agent",
            wallet_key=self.secrets.wallet_key(s.name), admin_api_key=self.secrets.admin_api_key(s.name),
            webhook_key=self.secrets.webhook_key(s.name),
            seed=self.secrets.seed(s.name) if s.public_did else None,
            wallet_storage=self.wallet_storage())

    def agent_spec(self) -> ProcessSpec:
        launch = self.agent_launch()
        aca_py = Path(sys.executable).parent / "aca-py"
        return ProcessSpec(name=f"agent-{self.name}", argv=launch.argv(aca_py), env=launch.env(),
                           log_file=self.logs / f"agent-{self.name}.log",
                           ports=[self.settings.inbound_port, self.settings.admin_port])

    def controller_config(self) -> ControllerConfig:
        s, network = self.settings, self.network()
        chain = None
        if s.role in ("doctor", "pharmacy"):
            chain = ChainAccess(client=network.chain.client_config(), keystore_file=self.home / "chain-key.json",
                                keystore_password=self.secrets.get(f"chain-keystore-password:{s.name}"))
        return ControllerConfig(
            name=s.name, role=s.role, label=s.label, host=s.host, port=s.controller_port,
            public_url=s.controller_url,
            agent=AgentLink(admin_url=s.admin_url, admin_api_key=self.secrets.admin_api_key(s.name),
                            webhook_key=self.secrets.webhook_key(s.name)),
            operator_token=self.operator_token(),
            page_password=self.secrets.page_password(s.name, s.role) if s.role == "patient" else None,
            staff=self.staff_seeds(),
            session_key=self.secrets.session_key(s.name),
            store=self.store_location(), chain=chain,
            genesis_file=self.genesis_file if s.role == "doctor" else None,
            prescription_schema_id=network.prescription_schema_id,
            auto_respond=s.auto_respond, checks=s.checks, offers=s.offers, webhooks=s.webhooks)

    def controller_spec(self) -> ProcessSpec:
        return ProcessSpec(name=f"controller-{self.name}",
                           argv=[sys.executable, "-m", "erx_roles.serve", "--config", str(self.controller_config_file)],
                           log_file=self.logs / f"controller-{self.name}.log", ports=[self.settings.controller_port])

    def process_names(self) -> list[str]:
        return [f"controller-{self.name}", f"agent-{self.name}", "postgres"]

    # -- up / down / status ----------------------------------------------------------------------------
    async def up(self) -> None:
        s = self.settings
        if s.public_did:
            await self._require_onboarded()
        cluster = self.postgres()
        if cluster is not None:
            await self._start_postgres(cluster)
        await self._start_agent()
        self.controller_config().save(self.controller_config_file)
        await self._start_controller()

    async def _require_onboarded(self) -> None:
        did, _ = self.did_and_verkey()
        async with await IndyLedger.open(self.genesis_file) as ledger:
            if await ledger.get_nym(did, require_state_proof=False) is None:
                raise SetupError(f"{self.name}: DID {did} is not on the Indy network: hand {self.join_request_file} "
                                 "to the health authority (`erx authority onboard <file>`) and start again")

    async def _start_postgres(self, cluster: PostgresCluster) -> None:
        spec = cluster.spec(self.logs / "postgres.log")
        await asyncio.to_thread(cluster.initialise, self.progress)
        await self.launcher.start(spec)
        await cluster.wait_ready(alive=lambda: self.supervisor.is_running(spec.name))
        user, password = self._db_user()
        await asyncio.to_thread(cluster.ensure_role, user, password.get_secret_value(), createdb=True)
        await asyncio.to_thread(cluster.ensure_database, f"{user}_records", user)
        self.progress(f"{self.name}: PostgreSQL serving at {self.settings.host}:{self.settings.postgres_port}")

    async def _start_agent(self) -> None:
        spec = self.agent_spec()
        await self.launcher.start(spec)
        async with self.admin() as admin:
            await self.launcher.until([spec], admin.is_ready, 60, f"agent {self.name}")
            did = await admin.public_did() if self.settings.public_did else None
        self.progress(f"agent-{self.name}: ready at {self.settings.admin_url}" + (f", public DID {did.did}" if did else ""))

    async def _start_controller(self) -> None:
        spec = self.controller_spec()
        await self.launcher.start(spec)
        await self.launcher.until([spec], lambda: http_ok(f"{self._local_controller_url}/health"), 60,
                                  f"controller {self.name}")
        self.progress(f"controller-{self.name}: serving at {self.settings.controller_url}")

    @property
    def _local_controller_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.controller_port}"

    def down(self) -> list[str]:
        if not self.initialised:
            return []
        return self.launcher.stop_all(self.process_names())

    def wipe(self) -> None:
        """Stop, and remove the home and its PostgreSQL cluster (which lives outside it)."""
        self.down()
        if self.initialised and (cluster := self.postgres()) is not None:
            cluster.remove()
        if self.home.exists():
            shutil.rmtree(self.home)

    async def status(self) -> dict[str, AgentStatus | ControllerStatus]:
        agent, controller = await asyncio.gather(self._agent_status(), self._controller_status())
        return {f"agent-{self.name}": agent, f"controller-{self.name}": controller}

    async def _agent_status(self) -> AgentStatus:
        s = self.settings
        async with self.admin() as admin:
            if not await admin.is_ready():
                return AgentStatus(healthy=False, admin_url=s.admin_url, detail="admin API not ready or not running")
            did = await admin.public_did()
        if s.public_did and did is None:
            return AgentStatus(healthy=False, admin_url=s.admin_url, detail="ready, but has no public DID")
        return AgentStatus(healthy=True, admin_url=s.admin_url, public_did=did.did if did else None,
                           detail="ready" + (f", public DID {did.did}" if did else " (holder, no public DID)"))

    async def _controller_status(self) -> ControllerStatus:
        url = self.settings.controller_url
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
                async with http.get(f"{self._local_controller_url}/health") as resp:
                    ok = resp.status == 200
                    health = await resp.json() if ok else {}
        except Exception as exc:
            return ControllerStatus(healthy=False, url=url, detail=f"not answering: {exc or type(exc).__name__}")
        if not ok:
            return ControllerStatus(healthy=False, url=url, detail="unhealthy")
        attention = health.get("needs_attention") or {}
        detail = f"{self.settings.role} controller serving"
        if attention:  # serving, but records the operator must look at (see the controller's log)
            detail += f"; {len(attention)} record(s) need attention: " + "; ".join(
                f"{record_id}: {why}" for record_id, why in list(attention.items())[:5])
        return ControllerStatus(healthy=True, url=url, detail=detail, needs_attention=attention)

