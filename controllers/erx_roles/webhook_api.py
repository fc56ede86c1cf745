"""The REST face of a controller's outgoing webhooks: integrators subscribe URLs, inspect their
deliveries, and can read the event log to catch up (`erx_core.webhooks` does the durable delivery).

Each subscription belongs to the integrator that created it; an integrator sees and removes only its
own. The operator token sees all of them.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from erx_core.staff import Action
from erx_core.store import Store
from erx_core.webhooks import Delivery, Outbox, Subscription, SubscriptionCreate, SubscriptionCreated, WebhookEvent
from erx_roles.api import Api
from erx_roles.errors import not_found
from erx_roles.http import Caller
from erx_roles.integrators import Integrators, caller_of


class _Owner(BaseModel):
    integrator_id: str | None  # None: created with the operator token


class EventsQuery(BaseModel):
    after_seq: int = Field(default=0, ge=0, le=2**63 - 1, description="return events with a greater sequence number")
    limit: int = Field(default=100, ge=1, le=1000)


class DeliveriesQuery(BaseModel):
    limit: int = Field(default=100, ge=1, le=1000)


class WebhookApi:
    def __init__(self, outbox: Outbox, store: Store, integrators: Integrators):
        self.outbox = outbox
        self._owners = store.table("subscription-owner", _Owner)
        integrators.on_remove.append(self._drop_subscriptions_of)

    def _drop_subscriptions_of(self, integrator_id: str) -> None:
        for sub in self.outbox.subscriptions():
            owner = self._owners.get(sub.subscription_id)
            if owner is not None and owner.integrator_id == integrator_id:
                self.outbox.unsubscribe(sub.subscription_id)
                self._owners.delete(sub.subscription_id)

    def _visible(self, caller: Caller, subscription_id: str) -> bool:
        if caller.is_operator:
            return True
        owner = self._owners.get(subscription_id)
        return owner is not None and owner.integrator_id == caller.integrator_id

    def _own(self, caller: Caller, subscription_id: str) -> Subscription:
        found = self.outbox.subscription(subscription_id)
        if found is None or not found.active or not self._visible(caller, subscription_id):
            raise not_found(f"webhook subscription {subscription_id}")
        return found

    def api(self) -> Api:
        api = Api("webhooks")
        tag = "webhooks"

        @api.operation("POST", "/api/webhooks", summary="Subscribe a URL to events", tag=tag,
                       body=SubscriptionCreate, response=SubscriptionCreated, status=201, action=Action.MANAGE_WEBHOOKS)
        async def create_subscription(request: web.Request, body: SubscriptionCreate) -> SubscriptionCreated:
            """The answer holds the signing secret, once. Events from now on are delivered, in order,
            signed (`Erx-Signature`), retried with backoff; see docs/webhooks.md."""
            created = self.outbox.subscribe(body)
            self._owners.put(created.subscription_id, _Owner(integrator_id=caller_of(request).integrator_id))
            return created

        @api.operation("GET", "/api/webhooks", summary="Your active webhook subscriptions", tag=tag,
                       response=list[Subscription], action=Action.MANAGE_WEBHOOKS)
        async def list_subscriptions(request: web.Request) -> list[Subscription]:
            caller = caller_of(request)
            return [s for s in self.outbox.subscriptions() if s.active and self._visible(caller, s.subscription_id)]

        @api.operation("GET", "/api/webhooks/{subscription_id}", summary="One webhook subscription", tag=tag,
                       response=Subscription, errors=(404,), action=Action.MANAGE_WEBHOOKS)
        async def get_subscription(request: web.Request, subscription_id: str) -> Subscription:
            return self._own(caller_of(request), subscription_id)

        @api.operation("DELETE", "/api/webhooks/{subscription_id}", summary="Unsubscribe", tag=tag, errors=(404,),
                       action=Action.MANAGE_WEBHOOKS)
        async def delete_subscription(request: web.Request, subscription_id: str) -> None:
            """Pending deliveries of this subscription are dropped."""
            self._own(caller_of(request), subscription_id)
            self.outbox.unsubscribe(subscription_id)
            self._owners.delete(subscription_id)

        @api.operation("GET", "/api/webhooks/{subscription_id}/deliveries", tag=tag, errors=(404,),
                       summary="Recent deliveries of a subscription, newest first", query=DeliveriesQuery,
                       response=list[Delivery], action=Action.MANAGE_WEBHOOKS)
        async def list_deliveries(request: web.Request, subscription_id: str, query: DeliveriesQuery) -> list[Delivery]:
            self._own(caller_of(request), subscription_id)
            return self.outbox.deliveries(subscription_id, limit=query.limit)

        @api.operation("GET", "/api/events", summary="The event log, oldest first, to catch up or replay",
                       tag=tag, query=EventsQuery, response=list[WebhookEvent], action=Action.VIEW)
        async def list_events(_: web.Request, query: EventsQuery) -> list[WebhookEvent]:
            """The same events the webhooks deliver, numbered by `seq` without gaps."""
            return self.outbox.events(after_seq=query.after_seq, limit=query.limit)

        return api
