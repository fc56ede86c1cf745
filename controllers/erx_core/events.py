"""Agent webhooks in, awaitable events out.

ACA-Py POSTs every state change to `<controller>/webhooks/topic/<topic>/` with the webhook key in an
`x-api-key` header. `EventBus` lets protocol code say "wait until this exchange reaches this state"
without polling: register the expectation *before* triggering the action, then await it.

    waiter = bus.expect("issue_credential_v2_0", lambda p: p["cred_ex_id"] == ex_id and p["state"] == "done")
    await admin.send_offer(...)
    event = await waiter.wait(30)
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import deque
from typing import Any, Awaitable, Callable

from aiohttp import web
from pydantic import SecretStr

LOG = logging.getLogger("erx.events")

Payload = dict[str, Any]
Predicate = Callable[[Payload], bool]
Handler = Callable[[str, Payload], Awaitable[None]]


class EventTimeout(TimeoutError):
    pass


class Waiter:
    def __init__(self, bus: EventBus, topic: str, predicate: Predicate):
        self.topic = topic
        self.predicate = predicate
        self.future: asyncio.Future[Payload] = asyncio.get_running_loop().create_future()
        self._bus = bus

    async def wait(self, timeout_s: float) -> Payload:
        try:
            return await asyncio.wait_for(asyncio.shield(self.future), timeout_s)
        except asyncio.TimeoutError:
            raise EventTimeout(f"no {self.topic} event matching the expectation within {timeout_s:.0f} s") from None
        finally:
            self._bus._waiters.discard(self)


class EventBus:
    def __init__(self, history: int = 200):
        self._waiters: set[Waiter] = set()
        self._handlers: list[tuple[str, Handler]] = []
        # Recent events, so an expectation registered a moment too late still sees what it waited for.
        self._recent: deque[tuple[str, Payload]] = deque(maxlen=history)

    def expect(self, topic: str, predicate: Predicate, *, include_recent: bool = False) -> Waiter:
        waiter = Waiter(self, topic, predicate)
        if include_recent:
            for t, payload in reversed(self._recent):
                if t == topic and _matches(predicate, payload):
                    waiter.future.set_result(payload)
                    return waiter
        self._waiters.add(waiter)
        return waiter

    def recent(self, topic: str, predicate: Predicate) -> list[Payload]:
        """Events of `topic` already received that match, oldest first."""
        return [payload for t, payload in self._recent if t == topic and _matches(predicate, payload)]

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Call `handler(topic, payload)` for every event of `topic` ("*" for all)."""
        self._handlers.append((topic, handler))

    async def publish(self, topic: str, payload: Payload) -> None:
        self._recent.append((topic, payload))
        # Subscribers first: whoever awaits an event then sees the state the subscribers recorded.
        for wanted, handler in self._handlers:
            if wanted in (topic, "*"):
                try:
                    await handler(topic, payload)
                except Exception:  # one failing subscriber must not stop the others or the webhook
                    LOG.exception("event handler for %s failed", topic)
        for waiter in list(self._waiters):
            if waiter.topic == topic and not waiter.future.done() and _matches(waiter.predicate, payload):
                waiter.future.set_result(payload)
                self._waiters.discard(waiter)


def _matches(predicate: Predicate, payload: Payload) -> bool:
    try:
        return bool(predicate(payload))
    except (KeyError, TypeError):
        return False


def webhook_routes(bus: EventBus, webhook_key: SecretStr) -> list[web.RouteDef]:
    """aiohttp routes receiving one agent's webhooks; requests without the agent's key get 401."""
    expected = webhook_key.get_secret_value().encode()

    async def receive(request: web.Request) -> web.Response:
        given = request.headers.get("x-api-key", "").encode()
        if not hmac.compare_digest(given, expected):
            raise web.HTTPUnauthorized(text="missing or wrong webhook key")
        try:
            payload = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="webhook body is not JSON") from None
        if not isinstance(payload, dict):
            raise web.HTTPBadRequest(text="webhook body must be a JSON object")
        await bus.publish(request.match_info["topic"], payload)
        return web.Response(status=200)

    return [web.post("/webhooks/topic/{topic}/", receive), web.post("/webhooks/topic/{topic}", receive)]
