"""The one narrow configuration a role's controller gets.

A controller is started with a `ControllerConfig` file (mode 0600) written by its organisation's
deployment (`erx org up`). It names its own agent, its own secrets and the shared network's public
facts, and nothing else: never the launcher, never another organisation's key.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from erx_contracts.config import ChainConfig
from erx_core.settings import CheckSettings, OfferSettings, Role, revealed_json
from erx_core.staff import StaffSeed
from erx_core.webhooks import WebhookSettings
from erx_schemas.prescription import PrescribingRules


class AgentLink(BaseModel):
    """How the controller reaches its own ACA-Py agent, and how the agent's webhooks prove themselves."""

    model_config = ConfigDict(extra="forbid")

    admin_url: str
    admin_api_key: SecretStr
    webhook_key: SecretStr


class ChainAccess(BaseModel):
    """The chain, and the organisation's own account on it (an encrypted keystore and its password)."""

    model_config = ConfigDict(extra="forbid")

    client: ChainConfig
    keystore_file: Path
    keystore_password: SecretStr


class StoreLocation(BaseModel):
    """Where the controller keeps its records: an SQLite file (the embedded default) or PostgreSQL."""

    model_config = ConfigDict(extra="forbid")

    sqlite_file: Path | None = None
    postgres_dsn: SecretStr | None = None  # postgresql://user:password@host:port/db — holds a password


class ControllerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the organisation's (or wallet's) name, unique in its deployment")
    role: Role
    label: str
    host: str = "127.0.0.1"
    port: int = Field(gt=0, lt=65536)
    public_url: str = Field(description="where people and wallets reach this controller (short links, QR codes)")
    agent: AgentLink
    operator_token: SecretStr
    page_password: SecretStr | None = None  # the wallet's one page password; an organisation's staff sign in as themselves
    session_key: SecretStr
    staff: list[StaffSeed] = Field(default=[], description="accounts created at start-up unless they exist "
                                                           "(the dev-default ones; erx_core.staff)")
    store: StoreLocation
    chain: ChainAccess | None = None  # organisations only: the patient's wallet never touches the chain
    genesis_file: Path | None = None  # the doctor reads revocations straight from the Indy network
    prescription_schema_id: str | None = None
    auto_respond: bool = True  # wallet stand-in only
    prescribing: PrescribingRules = PrescribingRules()  # a practice's default window and limits per kind
    checks: CheckSettings = CheckSettings()
    offers: OfferSettings = OfferSettings()
    webhooks: WebhookSettings = WebhookSettings()

    def save(self, path: Path) -> None:
        """Write with the secrets revealed, readable by the owner only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(revealed_json(self))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ControllerConfig:
        return cls.model_validate_json(path.read_text())

