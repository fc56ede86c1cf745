"""How one ACA-Py agent is started: askar-anoncreds wallet, admin API key, webhooks to its controller.

Secrets (wallet key, DID seed, admin API key, webhook key) go to the agent through ACA-Py's own
environment variables, never on the command line, where any local user could read them in `ps`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, SecretStr


class AgentLaunch(BaseModel):
    name: str
    label: str
    host: str
    inbound_port: int
    admin_port: int
    webhook_url: str
    genesis_file: Path
    tails_url: str
    home: Path  # ACAPY_HOME: the agent's wallet and local tails files
    wallet_key: SecretStr
    admin_api_key: SecretStr
    webhook_key: SecretStr
    # Organisations start with a seed for their public DID (already written to the pool as ENDORSER).
    seed: SecretStr | None = None
    log_level: str = "info"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.inbound_port}"

    def argv(self, aca_py: Path) -> list[str]:
        args = [
            str(aca_py), "start",
            "--label", self.label,
            "--inbound-transport", "http", self.host, str(self.inbound_port),
            "--outbound-transport", "http",
            "--endpoint", self.endpoint,
            "--admin", self.host, str(self.admin_port),
            "--wallet-type", "askar-anoncreds",
            "--wallet-name", f"erx-{self.name}",
            "--auto-provision",
            "--genesis-file", str(self.genesis_file),
            "--ledger-pool-name", f"erx-{self.name}",
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
        return env
