"""The one typed settings object of the project.

Every component reads its configuration from `Settings`. Values come from environment variables
prefixed `ERX_` (nested with `__`, e.g. `ERX_CHAIN__PORT=8645`), and otherwise from dev defaults that
work offline on a fresh machine. Secrets (seeds, wallet keys, admin API keys) are not settings: they
are generated on first use and kept under the state directory (see `erx_core.secrets`).
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from erx_core.processes import free_port
from erx_core.webhooks import WebhookSettings

REPO_ROOT = Path(__file__).resolve().parents[2]

Role = Literal["doctor", "pharmacy", "patient"]


class PoolSettings(BaseModel):
    """The local Hyperledger Indy pool (4 validators, each a node port and a client port)."""

    network_name: str = "erx-dev"
    node_ports: list[int] = [9701, 9703, 9705, 9707]
    client_ports: list[int] = [9702, 9704, 9706, 9708]
    # Python 3.8 is indy-node 1.13's own target (shared/findings/indy-pool.md).
    base_python: Path = Path("/root/.pyenv/versions/3.8.18/bin/python")
    ready_timeout_s: float = 90.0

    @model_validator(mode="after")
    def _four_validators(self) -> PoolSettings:
        if len(self.node_ports) != len(self.client_ports) or len(self.node_ports) < 4:
            raise ValueError("the pool needs at least 4 validators, each with a node and a client port")
        return self


class ChainSettings(BaseModel):
    """The local EVM node standing in for a permissioned, gas-free Quorum/Besu network."""

    # JSON-RPC for everyone (controllers, `erx up`, tests): the journaling proxy (erx_chain.proxy).
    port: int = 8545
    # anvil itself, behind the proxy; internal. None: a free port, chosen when the settings are made
    # (like the test networks' ports) and kept in settings.json; `erx up` keeps a running node's port.
    node_port: int | None = None
    chain_id: int = 1337
    # 1 s blocks mirror IBFT/QBFT; None switches to automine (faster tests, not production-like).
    block_time_s: float | None = 1.0
    # Permissioned networks set the block gas limit in genesis; the default 30M caps throughput.
    gas_limit: int = 10_000_000_000
    tx_timeout_s: float = 30.0
    # The node dumps its state this often (whole seconds; 1 is anvil's minimum). A crash rolls the node
    # back to its last dump; the proxy's journal re-applies what was lost, so this only bounds the work.
    state_interval_s: int = Field(default=1, ge=1)
    # How long the proxy holds a request while the node restarts or is reconciled before answering 503.
    proxy_hold_timeout_s: float = Field(default=5.0, gt=0)


class TailsSettings(BaseModel):
    """The tails server holding revocation registries' tails files, addressed by hash."""

    port: int = 6543
    max_file_bytes: int = 64 * 1024 * 1024


class AgentSettings(BaseModel):
    """One ACA-Py agent and the controller its webhooks go to."""

    name: str
    role: Role
    label: str
    inbound_port: int
    admin_port: int
    controller_port: int
    # Organisations get a public DID (ENDORSER) on the pool; a patient's wallet does not.
    public_did: bool = True
    # Patient wallets only: accept offers and answer proof requests on their own, like a user who always
    # taps "accept" and "share". Off, they wait for the wallet page (or the API) to decide.
    auto_respond: bool = True
    # Where the agent's wallet and the controller's records live: embedded SQLite, or PostgreSQL (a local
    # cluster in the organisation's home, on postgres_port).
    storage: Literal["sqlite", "postgres"] = "sqlite"
    postgres_port: int | None = None

    @model_validator(mode="after")
    def _postgres_has_a_port(self) -> AgentSettings:
        if self.storage == "postgres" and self.postgres_port is None:
            raise ValueError(f"{self.name}: storage postgres needs a postgres_port")
        return self


def _default_agents() -> list[AgentSettings]:
    return [
        AgentSettings(name="doctor", role="doctor", label="Dr. Practice (dev)",
                      inbound_port=8020, admin_port=8021, controller_port=8022),
        AgentSettings(name="pharmacy", role="pharmacy", label="Pharmacy A (dev)",
                      inbound_port=8030, admin_port=8031, controller_port=8032),
        AgentSettings(name="pharmacy-b", role="pharmacy", label="Pharmacy B (dev)",
                      inbound_port=8050, admin_port=8051, controller_port=8052),
        AgentSettings(name="patient", role="patient", label="Patient wallet (dev)",
                      inbound_port=8040, admin_port=8041, controller_port=8042, public_did=False),
    ]


class CheckSettings(BaseModel):
    """How long a pharmacy check may stay open. A verified check holds the presented token key in the
    agent's records until it ends, so it must not stay open for ever."""

    unanswered_after_s: float = Field(default=15 * 60, gt=0, description="a QR code or request nobody answered")
    undispensed_after_s: float = Field(default=60 * 60, gt=0, description="verified but never dispensed")


class OfferSettings(BaseModel):
    """How long a practice's credential offer waits for the wallet to store it."""

    unstored_after_s: float = Field(default=60 * 60, gt=0, description="offered, never stored: token cancelled")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ERX_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(default=REPO_ROOT / ".erx", description="all state: ledgers, wallets, keys, logs, pids")
    # Installed environments are not state: tests with a throw-away home reuse them.
    venvs: Path = Field(default=REPO_ROOT / ".erx" / "venv", description="Python virtual environments")
    host: str = "127.0.0.1"
    pool: PoolSettings = PoolSettings()
    chain: ChainSettings = ChainSettings()
    tails: TailsSettings = TailsSettings()
    agents: list[AgentSettings] = Field(default_factory=_default_agents)
    # The health authority is a deployment without an agent: it governs the token contract (and its
    # register of prescribers) and publishes the national prescription schema.
    authority_name: str = "health-authority"
    # Outgoing webhooks to integrators: request timeout, retry backoff, give-up, signature tolerance.
    webhooks: WebhookSettings = WebhookSettings()
    checks: CheckSettings = CheckSettings()
    offers: OfferSettings = OfferSettings()

    @model_validator(mode="after")
    def _ports_do_not_collide(self) -> Settings:
        if self.chain.node_port is None:  # the chain node's internal port: free, and no one else's
            taken = {port for _, port in self.port_plan()}
            self.chain.node_port = next(p for p in iter(free_port, None) if p not in taken)
        owners: dict[int, str] = {}
        for owner, port in self.port_plan():
            if port in owners:
                raise ValueError(f"port {port} is configured for both {owners[port]} and {owner}")
            owners[port] = owner
        names = [a.name for a in self.agents]
        if len(set(names)) != len(names):
            raise ValueError(f"agent names must be unique: {names}")
        return self

    def port_plan(self) -> list[tuple[str, int]]:
        """Every port the network binds, with the component that owns it."""
        plan: list[tuple[str, int]] = []
        for i, (node, client) in enumerate(zip(self.pool.node_ports, self.pool.client_ports), start=1):
            plan += [(f"indy Node{i} (node)", node), (f"indy Node{i} (client)", client)]
        plan.append(("chain", self.chain.port))
        if self.chain.node_port is not None:
            plan.append(("chain node (behind the journaling proxy)", self.chain.node_port))
        plan.append(("tails", self.tails.port))
        for a in self.agents:
            plan += [(f"agent-{a.name} (inbound)", a.inbound_port), (f"agent-{a.name} (admin)", a.admin_port),
                     (f"controller-{a.name}", a.controller_port)]
            if a.postgres_port is not None:
                plan.append((f"postgres of {a.name}", a.postgres_port))
        return plan

    # -- where things live under the state directory ---------------------------------------
    @cached_property
    def paths(self) -> StatePaths:
        return StatePaths(self.home, self.venvs)

    def save(self, path: Path) -> None:
        """Write these settings (secret values included, mode 0600) for processes started from them."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(revealed_json(self))

    @classmethod
    def load(cls, path: Path) -> Settings:
        return cls.model_validate_json(path.read_text())

    def agent(self, name: str) -> AgentSettings:
        for a in self.agents:
            if a.name == name:
                return a
        raise KeyError(f"no agent named {name!r} (configured: {[a.name for a in self.agents]})")

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"


class StatePaths:
    """The layout of the state directory: one home per deployment. Nothing outside it is written."""

    def __init__(self, home: Path, venvs: Path):
        self.home = home
        self.main_venv = venvs / "main"
        self.node_venv = venvs / "indy-node"
        self.network = home / "network"      # the dev network: pool, chain, tails, its descriptor
        self.authority = home / "authority"  # the health authority's keys and published descriptor
        self.orgs = home / "orgs"            # one home per organisation (and wallet stand-in)
        self.settings = home / "settings.json"  # what the running system was started with

    def org_home(self, name: str) -> Path:
        return self.orgs / name


def revealed_json(model: BaseModel) -> str:
    """`model` as JSON with its secrets revealed: for files only their owner reads (mode 0600)."""
    def reveal(value):
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"cannot serialise {type(value).__name__}")
    return json.dumps(model.model_dump(mode="python"), default=reveal, indent=2)


def load_settings(**overrides) -> Settings:
    return Settings(**overrides)
