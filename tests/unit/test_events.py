"""Webhooks become awaitable events: subscribers see each event before waiters are woken."""

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp import web
from pydantic import SecretStr

from erx_core.events import EventBus, EventTimeout, webhook_routes


async def test_waiter_registered_before_the_event_receives_it():
    bus = EventBus()
    waiter = bus.expect("connections", lambda p: p["state"] == "active")
    await bus.publish("connections", {"state": "request"})
    await bus.publish("connections", {"state": "active", "connection_id": "c1"})
    assert (await waiter.wait(1))["connection_id"] == "c1"


async def test_recent_events_serve_a_late_waiter_only_when_asked():
    bus = EventBus()
    await bus.publish("issue_credential_v2_0", {"cred_ex_id": "x", "state": "done"})
    late = bus.expect("issue_credential_v2_0", lambda p: p["cred_ex_id"] == "x", include_recent=True)
    assert (await late.wait(1))["state"] == "done"
    strict = bus.expect("issue_credential_v2_0", lambda p: p["cred_ex_id"] == "x")
    with pytest.raises(EventTimeout):
        await strict.wait(0.05)


async def test_subscribers_run_before_waiters_wake_and_a_failing_one_does_not_stop_others():
    bus = EventBus()
    seen = []

    async def broken(topic, payload):
        raise RuntimeError("boom")

    async def recorder(topic, payload):
        seen.append(payload["n"])

    bus.subscribe("t", broken)
    bus.subscribe("*", recorder)
    waiter = bus.expect("t", lambda p: True)
    await bus.publish("t", {"n": 1})
    await waiter.wait(1)
    assert seen == [1]


async def test_predicate_errors_count_as_no_match():
    bus = EventBus()
    waiter = bus.expect("t", lambda p: p["missing"] == 1)
    await bus.publish("t", {"other": 1})
    with pytest.raises(EventTimeout):
        await waiter.wait(0.05)


async def test_webhook_route_requires_the_agents_key():
    bus = EventBus()
    app = web.Application()
    app.add_routes(webhook_routes(bus, SecretStr("k3y")))
    waiter = bus.expect("connections", lambda p: True)
    async with TestClient(TestServer(app)) as client:
        assert (await client.post("/webhooks/topic/connections/", json={"state": "x"})).status == 401
        assert (await client.post("/webhooks/topic/connections/", json={"state": "x"},
                                  headers={"x-api-key": "wrong"})).status == 401
        assert (await client.post("/webhooks/topic/connections/", data=b"not json",
                                  headers={"x-api-key": "k3y"})).status == 400
        assert (await client.post("/webhooks/topic/connections/", json={"state": "active"},
                                  headers={"x-api-key": "k3y"})).status == 200
    assert (await asyncio.wait_for(waiter.wait(1), 2))["state"] == "active"
