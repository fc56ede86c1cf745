"""Everything a role's controller is wired to: its agent, its webhooks, its records, the chain.

Built from the controller's one narrow configuration (`erx_core.config.ControllerConfig`): nothing
here knows the launcher, the dev network or any other organisation. `wire` subscribes a service to
the agent's events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from erx_chain.keystore import load_or_create
from erx_contracts.client import PrescriptionTokenClient
from erx_core.acapy_admin import AcaPyAdmin
from erx_core.config import ControllerConfig, StoreLocation
from erx_core.events import EventBus, Handler
from erx_core.store import Store
from erx_core.webhooks import Outbox
from erx_indy.ledger import IndyLedger
from erx_roles.invitations import ShortLinks


@dataclass
class RoleContext:
    config: ControllerConfig
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
    async def open(cls, config: ControllerConfig) -> RoleContext:
        chain = None
        if config.chain is not None:
            account = load_or_create(config.chain.keystore_file, config.chain.keystore_password.get_secret_value(),
                                     create=False)
            chain = await PrescriptionTokenClient.connect(config.chain.client, account)
        store = open_store(config.store)
        ledger = await IndyLedger.open(config.genesis_file) if config.role == "doctor" else None
        return cls(config=config, admin=AcaPyAdmin(config.agent.admin_url, config.agent.admin_api_key),
                   bus=EventBus(), store=store, chain=chain,
                   outbox=Outbox(store, source=config.name, settings=config.webhooks),
                   links=ShortLinks(store, config.public_url), ledger=ledger)

    async def close(self) -> None:
        await self.outbox.close()
        await self.admin.close()
        if self.chain is not None:
            await self.chain.close()
        if self.ledger is not None:
            await self.ledger.close()
        self.store.close()


def open_store(location: StoreLocation) -> Store:
    if location.postgres_dsn is not None:
        return Store(location.postgres_dsn.get_secret_value())
    assert location.sqlite_file is not None
    return Store(location.sqlite_file)


class Subscriber(Protocol):
    def subscriptions(self) -> list[tuple[str, Handler]]: ...


def wire(service: Subscriber, bus: EventBus) -> None:
    """Subscribe a service's handlers to its agent's events (`service.subscriptions()`), in their order.
    `serve.build_app` wires the role's service here, at start-up, before the pages' live updates."""
    for topic, handler in service.subscriptions():
        bus.subscribe(topic, handler)
