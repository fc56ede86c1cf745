"""How one ACA-Py agent is started: askar-anoncreds wallet, admin API key, webhooks to its controller.

The wallet is an SQLite file under the agent's home by default, or a PostgreSQL database
(`WalletStorage`).

Secrets (wallet key, DID seed, admin API key, webhook key, the wallet database's password) go to the
agent through ACA-Py's own environment variables, never on the command line, where any local user
could read them in `ps`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr


class WalletStorage(BaseModel):
    """askar's wallet in PostgreSQL (ACA-Py's `postgres_storage`), in the database named as the wallet
    (`AgentLaunch.wallet_name`). askar creates that database itself on the agent's first start, as
    `account`, which therefore needs the right to create databases
    (`erx_core.postgres.PostgresCluster.ensure_role(account, password, createdb=True)`); no
    administrator's credentials are handed to the agent. (A database made beforehand, empty, is not
    one ACA-Py's auto-provisioning recognises: it fails to open it and does not provision it.)"""

    host: str = "127.0.0.1"
    port: int = Field(gt=0, lt=65536)
    account: str
    password: SecretStr
    max_connections: int = Field(default=10, ge=1)  # askar's connection pool
    connect_timeout_s: int = Field(default=10, ge=1)

    def config(self) -> str:
        """--wallet-storage-config (nothing secret)."""
        return json.dumps({"url": f"{self.host}:{self.port}", "max_connections": self.max_connections,
                           "connection_timeout": self.connect_timeout_s})

    def creds(self) -> str:
        """ACAPY_WALLET_STORAGE_CREDS: holds the password."""
        return json.dumps({"account": self.account, "password": self.password.get_secret_value()})


class AgentLaunch(BaseModel):
    name: str
    label: str
    host: str
    inbound_port: int
    admin_port: int
    webhook_url: str
    genesis_file: Path | None  # None: no ledger (a wallet-only agent, e.g. in tests)
    tails_url: str
    home: Path  # ACAPY_HOME: the agent's wallet and local tails files
    wallet_key: SecretStr
    admin_api_key: SecretStr
    webhook_key: SecretStr
    # Organisations start with a seed for their public DID (already written to the pool as ENDORSER).
    seed: SecretStr | None = None
    log_level: str = "info"
    # None: the wallet is an SQLite file under `home`
    wallet_storage: WalletStorage | None = None
    # where wallets reach the agent (announced in invitations); None: the bound address. In production a
    # reverse proxy's https URL.
    public_endpoint: str | None = None

    @property
    def wallet_name(self) -> str:
        """The askar store's name: its directory under `home`, or its PostgreSQL database."""
        return f"erx-{self.name}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    @property
    def endpoint(self) -> str:
        return self.public_endpoint or f"http://{self.host}:{self.inbound_port}"

    def argv(self, aca_py: Path) -> list[str]:
        args = [
            str(aca_py), "start",
            "--label", self.label,
            "--inbound-transport", "http", self.host, str(self.inbound_port),
            "--outbound-transport", "http",
            "--endpoint", self.endpoint,
            "--admin", self.host, str(self.admin_port),
            "--wallet-type", "askar-anoncreds",
            "--wallet-name", self.wallet_name,
            "--auto-provision",
        ]
        if self.wallet_storage is not None:
            args += ["--wallet-storage-type", "postgres_storage", "--wallet-storage-config", self.wallet_storage.config()]
        if self.genesis_file is None:
            args += ["--no-ledger"]
        else:
            args += ["--genesis-file", str(self.genesis_file), "--ledger-pool-name", f"erx-{self.name}"]
        args += [
            "--tails-server-base-url", self.tails_url,
            # Integrators and the pages need exchange records after they finish.
            "--preserve-exchange-records",
            "--notify-revocation",
            # ACA-Py issue 3738: concurrent revocable issuance can repeat a revocation index
            "--plugin", "erx_agents.acapy_plugins.unique_revocation_ids",
            "--monitor-revocation-notification",
            "--log-level", self.log_level,
        ]
        return args

    def env(self) -> dict[str, str]:
        env = {
            "ACAPY_HOME": str(self.home),
            # ACA-Py caches downloaded tails files under $HOME/.indy_client/tails: one cache per agent, inside
            # its own home, so no agent reads another's files and a tails-server outage is not hidden
            "HOME": str(self.home),
            "ACAPY_WALLET_KEY": self.wallet_key.get_secret_value(),
            "ACAPY_ADMIN_API_KEY": self.admin_api_key.get_secret_value(),
            # The fragment reaches the controller as an x-api-key header on every webhook.
            "ACAPY_WEBHOOK_URL": f"{self.webhook_url}#{self.webhook_key.get_secret_value()}",
        }
        if self.seed is not None:
            env["ACAPY_WALLET_SEED"] = self.seed.get_secret_value()
        if self.wallet_storage is not None:
            env["ACAPY_WALLET_STORAGE_CREDS"] = self.wallet_storage.creds()
        return env
