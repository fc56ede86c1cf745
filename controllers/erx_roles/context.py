"""Everything a role's controller is wired to: its agent, its webhooks, its records, the chain."""

from __future__ import annotations

from dataclasses import dataclass

from erx_contracts.client import PrescriptionTokenClient
from erx_core.acapy_admin import AcaPyAdmin
from erx_core.events import EventBus
from erx_core.network import Network
from erx_core.settings import AgentSettings
from erx_core.store import Store
from erx_core.webhooks import Outbox
from erx_indy.ledger import IndyLedger
from erx_roles.invitations import ShortLinks


@dataclass
class RoleContext:
    network: Network
    agent: AgentSettings
    admin: AcaPyAdmin
    bus: EventBus
    store: Store
    chain: PrescriptionTokenClient | None  # organisations only; the patient never touches the chain
    outbox: Outbox  # events for the organisation's integrators (webhooks)
    links: ShortLinks  # QR-sized short links to this organisation's invitations
    # the Indy network, read directly (the doctor confirms revocations with it): never through the agent,
    # whose admin server shuts the agent down on a ledger error
    ledger: IndyLedger | None = None

    @classmethod
    async def open(cls, network: Network, agent_name: str) -> RoleContext:
        agent = network.settings.agent(agent_name)
        chain = None
        if agent.role in ("doctor", "pharmacy"):
            chain = await PrescriptionTokenClient.connect(network.chain_config(), network.chain_account(agent_name))
        store = Store(network.paths.controllers / f"{agent_name}.db")
        ledger = await IndyLedger.open(network.genesis_file) if agent.role == "doctor" else None
        return cls(network=network, agent=agent, admin=network.admin(agent_name), bus=EventBus(), store=store,
                   chain=chain, outbox=Outbox(store, source=agent_name, settings=network.settings.webhooks),
                   links=ShortLinks(store, network.controller_url(agent_name)), ledger=ledger)

    async def close(self) -> None:
        await self.outbox.close()
        await self.admin.close()
        if self.chain is not None:
            await self.chain.close()
        if self.ledger is not None:
            await self.ledger.close()
        self.store.close()
