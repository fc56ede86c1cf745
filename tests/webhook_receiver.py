"""An integrator's webhook endpoint for tests: a real HTTP server on 127.0.0.1 that checks every
delivery's signature with the subscription's secret and records the events it accepts.

It can be told to hold deliveries (to have one in flight while a controller is killed) and to refuse
them (to make the controller retry)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

from aiohttp import web

from erx_core.webhooks import verify_signature


class WebhookReceiver:
    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}  # path -> the subscription's signing secret
        self.events: list[dict[str, Any]] = []  # accepted deliveries, in arrival order (duplicates kept)
        self.bad_signatures = 0
        self.refuse_with: int | None = None  # answer every delivery with this status (e.g. 503)
        self.held = asyncio.Event()  # set: deliveries are answered; clear: they wait (in flight)
        self.held.set()
        self.in_flight = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.add_routes([web.post("/hooks/{name}", self._receive)])
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        self.held.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, name: str) -> str:
        return f"{self.base_url}/hooks/{name}"

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        secret = self.secrets.get(request.match_info["name"], "")
        if not verify_signature(secret, body, request.headers.get("Erx-Timestamp", ""),
                                request.headers.get("Erx-Signature", "")):
            self.bad_signatures += 1
            return web.Response(status=401)
        await self._notify(in_flight=+1)
        try:
            await self.held.wait()
        finally:
            await self._notify(in_flight=-1)
        if self.refuse_with is not None:
            return web.Response(status=self.refuse_with)
        if request.transport is None or request.transport.is_closing():
            return web.Response(status=204)  # the sender is gone: it never learns of this delivery
        event = json.loads(body)
        assert event["id"] == request.headers["Erx-Event-Id"] and event["type"] == request.headers["Erx-Event-Type"]
        event["_subscription"] = request.match_info["name"]
        self.events.append(event)
        await self._notify()
        return web.Response(status=204)

    async def _notify(self, in_flight: int = 0) -> None:
        async with self._changed:
            self.in_flight += in_flight
            self._changed.notify_all()

    async def until(self, condition: Callable[[WebhookReceiver], bool], timeout_s: float = 60) -> None:
        """Wait until `condition(self)` holds (re-checked on every delivery)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: condition(self)), timeout_s)

    def of(self, name: str) -> list[dict[str, Any]]:
        """Accepted events of one subscription, duplicates removed, in seq order."""
        unique = {e["id"]: e for e in self.events if e["_subscription"] == name}
        return sorted(unique.values(), key=lambda e: e["seq"])
