"""Outgoing webhooks: signed, filtered, ordered, retried, durable across restarts, never leaking secrets.

Every test delivers to a real aiohttp receiver on 127.0.0.1 (OS-assigned port) with fast backoff.
Tests wait for what the receiver or the outbox's log saw, with a bounded timeout; they never sleep.
The outbox's store comes from `store_factory`: SQLite here; tests/integration/test_postgres.py runs
the same tests on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Awaitable, Callable

import pytest
from aiohttp import web
from pydantic import BaseModel, ValidationError

from erx_core.settings import Settings
from erx_core.webhooks import (EventType, Outbox, Subscription, SubscriptionCreate, WebhookEvent, WebhookSettings,
                               sign, verify_signature)
from tests.unit.test_store import opener

FAST = WebhookSettings(timeout_s=2, backoff_initial_s=0.05, backoff_max_s=0.2, give_up_after_s=60)


async def until(changed: asyncio.Event, predicate: Callable[[], bool], timeout_s: float = 5) -> None:
    """Wait, without polling, until `predicate()` holds; `changed` is set whenever it may have changed."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            changed.clear()
            await changed.wait()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    event: dict[str, Any]
    status: int


class Receiver:
    """An integrator's endpoint. `respond(n, event)` gives the status of the n-th request to arrive
    (0-based); it may be a coroutine, to hold a request open. `received` lists answered requests."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.requests = 0
        self.arrived = asyncio.Event()  # set on each request's arrival, before it is answered
        self.changed = asyncio.Event()  # set on each answer
        self.respond: Callable[[int, dict], int | Awaitable[int]] = lambda n, event: 200
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]  # the OS-assigned one; a restart rebinds it
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        event = json.loads(body)
        n, self.requests = self.requests, self.requests + 1
        self.arrived.set()
        status = self.respond(n, event)
        if not isinstance(status, int):
            status = await status
        self.received.append(Received(dict(request.headers), body, event, status))
        self.changed.set()
        return web.Response(status=status)

    def accepted(self) -> list[dict]:
        return [r.event for r in self.received if 200 <= r.status < 300]

    async def wait_for(self, predicate: Callable[[Receiver], bool], timeout_s: float = 5) -> None:
        await until(self.changed, lambda: predicate(self), timeout_s)


class LogWatch(logging.Handler):
    """The outbox's log, awaitable: how a test sees attempts no receiver answered."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.changed.set()

    async def wait_for(self, text: str, timeout_s: float = 5) -> None:
        await until(self.changed, lambda: any(text in m for m in self.messages), timeout_s)


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
async def second_receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
def log():
    logger = logging.getLogger("erx.webhooks")
    watch, level = LogWatch(), logger.level
    logger.addHandler(watch)
    logger.setLevel(logging.DEBUG)
    yield watch
    logger.removeHandler(watch)
    logger.setLevel(level)


@pytest.fixture
def store_factory(tmp_path):
    yield from opener(tmp_path / "controller.db")


@pytest.fixture
async def store(store_factory):
    return store_factory()


@pytest.fixture
async def outbox(store):
    box = Outbox(store, "doctor", FAST)
    yield box
    await box.close()


def seqs(events: list[dict]) -> list[int]:
    return [e["seq"] for e in events]


# -- signatures ------------------------------------------------------------------------------------
async def test_a_delivery_is_the_event_signed_with_the_subscription_secret(outbox, receiver):
    sub = outbox.subscribe(SubscriptionCreate(url=receiver.url, description="practice software"))
    assert sub.secret.startswith("whsec_") and len(sub.secret) > 40
    await outbox.start()
    event = outbox.record(EventType.ISSUED, {"prescription_id": "p1"})
    # a second event: once it arrives, the first is marked (a subscription's deliveries go one by one)
    outbox.record(EventType.REVOKED, {"prescription_id": "p1"})
    await receiver.wait_for(lambda r: len(r.received) == 2)

    got = receiver.received[0]
    assert WebhookEvent.model_validate_json(got.body) == event
    assert (event.seq, event.source, event.created_at.tzinfo) == (1, "doctor", UTC)
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Erx-Event-Id"] == event.id
    assert got.headers["Erx-Event-Type"] == "prescription.issued"
    ts, signature = got.headers["Erx-Timestamp"], got.headers["Erx-Signature"]
    assert abs(int(ts) - time.time()) < 60 and signature.startswith("v1=")
    assert verify_signature(sub.secret, got.body, ts, signature)
    # anything else is refused: another secret, another body, a stale or garbled timestamp
    assert not verify_signature("whsec_someone-else", got.body, ts, signature)
    assert not verify_signature(sub.secret, got.body.replace(b"p1", b"p2"), ts, signature)
    assert not verify_signature(sub.secret, got.body, ts, signature, now=int(ts) + 301)
    assert not verify_signature(sub.secret, got.body, "soon", signature)
    old = int(time.time()) - 1000
    assert not verify_signature(sub.secret, got.body, str(old), sign(sub.secret, old, got.body))
    assert verify_signature(sub.secret, got.body, str(old), sign(sub.secret, old, got.body), tolerance_s=2000)
    delivery = outbox.deliveries(sub.subscription_id)[-1]
    assert (delivery.event_id, delivery.state, delivery.attempts, delivery.last_status) == (
        event.id, "delivered", 1, 200)


# -- filtering and ordering ------------------------------------------------------------------------
async def test_a_subscription_gets_only_the_event_types_it_asked_for(outbox, receiver, second_receiver):
    everything = outbox.subscribe(SubscriptionCreate(url=receiver.url))
    dispensed = outbox.subscribe(SubscriptionCreate(url=second_receiver.url, events=[EventType.DISPENSED]))
    await outbox.start()
    for t in (EventType.PRESENTED, EventType.DISPENSED, EventType.REFUSED):
        outbox.record(t, {"check_id": "c1"})
    await receiver.wait_for(lambda r: len(r.accepted()) == 3)
    await second_receiver.wait_for(lambda r: len(r.accepted()) == 1)
    assert [e["type"] for e in receiver.accepted()] == ["prescription.presented", "prescription.dispensed",
                                                        "prescription.refused"]
    assert [e["type"] for e in second_receiver.accepted()] == ["prescription.dispensed"]
    # deliveries are created at record time: the filtered subscription never had the others queued
    assert [d.seq for d in outbox.deliveries(dispensed.subscription_id)] == [2]
    assert [d.seq for d in outbox.deliveries(everything.subscription_id)] == [3, 2, 1]


async def test_a_failing_receiver_gets_every_event_in_order_once_it_recovers(outbox, receiver, second_receiver):
    receiver.respond = lambda n, event: 500 if n < 3 else 200
    flaky = outbox.subscribe(SubscriptionCreate(url=receiver.url))
    healthy = outbox.subscribe(SubscriptionCreate(url=second_receiver.url))
    first = outbox.record(EventType.OFFERED, {"prescription_id": "p1"})  # before start: waits in the outbox
    await outbox.start()
    more = [outbox.record(EventType.ISSUED, {"prescription_id": f"p{i}"}) for i in (2, 3, 4)]

    await receiver.wait_for(lambda r: len(r.accepted()) == 4)
    # nothing after seq 1 was even attempted before seq 1 got through: no gap, ever
    assert seqs([r.event for r in receiver.received]) == [1, 1, 1, 1, 2, 3, 4]
    assert [e["id"] for e in receiver.accepted()] == [first.id] + [e.id for e in more]
    by_seq = {d.seq: d for d in outbox.deliveries(flaky.subscription_id)}
    assert (by_seq[1].state, by_seq[1].attempts, by_seq[1].last_status, by_seq[1].last_error) == (
        "delivered", 4, 200, None)
    assert by_seq[1].delivered_at is not None and by_seq[1].next_attempt_at is None
    assert (by_seq[2].state, by_seq[2].attempts) == ("delivered", 1)
    # the other subscription was never held up by this one
    await second_receiver.wait_for(lambda r: len(r.accepted()) == 4)
    assert seqs(second_receiver.accepted()) == [1, 2, 3, 4]
    assert all(r.status == 200 for r in second_receiver.received)
    assert outbox.deliveries(healthy.subscription_id, limit=2)[0].seq == 4


async def test_a_failing_delivery_is_pending_with_its_error_and_next_attempt(outbox, receiver):
    release = asyncio.get_running_loop().create_future()

    async def down_then_up(n, event):
        return 503 if not release.done() else 200

    receiver.respond = down_then_up
    sub = outbox.subscribe(SubscriptionCreate(url=receiver.url))
    await outbox.start()
    outbox.record(EventType.REVOKED, {"prescription_id": "p1"})
    await receiver.wait_for(lambda r: len(r.received) >= 2)
    [delivery] = outbox.deliveries(sub.subscription_id)
    assert (delivery.state, delivery.last_status, delivery.last_error) == ("pending", 503, "HTTP 503")
    assert delivery.attempts >= 1 and delivery.next_attempt_at is not None and delivery.delivered_at is None
    release.set_result(None)
    await receiver.wait_for(lambda r: len(r.accepted()) == 1)


# -- durability ------------------------------------------------------------------------------------
async def test_events_survive_a_restart_while_the_receiver_is_down(store_factory, receiver, log):
    await receiver.stop()  # the integrator's system is down: connections are refused
    store = store_factory()
    box = Outbox(store, "pharmacy", FAST)
    box.subscribe(SubscriptionCreate(url=receiver.url))
    await box.start()
    recorded = [box.record(EventType.PRESENTED, {"check_id": f"c{i}"}) for i in range(3)]
    await log.wait_for(f"webhook event {recorded[0].id} to subscription")  # it was tried, and failed
    await box.close()
    store.close()

    # the controller restarts, records one more, and the receiver is back on its port
    store = store_factory()
    box = Outbox(store, "pharmacy", FAST)
    try:
        recorded.append(box.record(EventType.DISPENSED, {"check_id": "c0"}))
        await receiver.start()
        await box.start()
        await receiver.wait_for(lambda r: {e["id"] for e in r.accepted()} >= {e.id for e in recorded})
    finally:
        await box.close()
        store.close()
    assert {e["id"] for e in receiver.accepted()} == {e.id for e in recorded}
    assert [e.seq for e in recorded] == [1, 2, 3, 4]
    assert seqs(receiver.accepted()) == [1, 2, 3, 4]


async def test_a_delivery_cut_off_before_it_was_marked_is_sent_again(store_factory, receiver):
    hold = asyncio.get_running_loop().create_future()

    async def hang_first(n, event):
        if n == 0:
            await hold  # the controller stops while the receiver is still answering
        return 200

    receiver.respond = hang_first
    store = store_factory()
    box = Outbox(store, "doctor", FAST)
    box.subscribe(SubscriptionCreate(url=receiver.url))
    await box.start()
    first = box.record(EventType.OFFERED, {"prescription_id": "p1"})
    second = box.record(EventType.ISSUED, {"prescription_id": "p1"})
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    await box.close()
    store.close()

    store = store_factory()
    box = Outbox(store, "doctor", FAST)
    try:
        await box.start()
        await receiver.wait_for(lambda r: len(r.accepted()) == 2)
    finally:
        hold.set_result(None)
        await box.close()
        store.close()
    await receiver.wait_for(lambda r: len(r.received) == 3)
    # the held one was answered after all: the receiver saw seq 1 twice (dedup by id), and no gap
    ids = [e["id"] for e in receiver.accepted()]
    assert ids.count(first.id) == 2 and ids.count(second.id) == 1
    assert sorted(set(seqs(receiver.accepted()))) == [1, 2]


async def test_an_event_recorded_in_a_failed_transaction_never_existed(store, outbox, receiver):
    class Rx(BaseModel):
        state: str

    table = store.table("prescription", Rx)
    sub = outbox.subscribe(SubscriptionCreate(url=receiver.url))
    with pytest.raises(RuntimeError):
        with store.transaction():
            table.put("p1", Rx(state="issued"))
            outbox.record(EventType.ISSUED, {"prescription_id": "p1"})
            raise RuntimeError("the role's update failed after the event was written")
    assert table.get("p1") is None
    assert outbox.events() == [] and outbox.deliveries(sub.subscription_id) == []

    # a nested block rolls back alone; the outer one commits; the seq left no hole
    with store.transaction():
        table.put("p2", Rx(state="issued"))
        kept = outbox.record(EventType.ISSUED, {"prescription_id": "p2"})
        with pytest.raises(ValueError):
            with store.transaction():
                outbox.record(EventType.REVOKED, {"prescription_id": "p2"})
                raise ValueError("changed its mind")
    after = outbox.record(EventType.DISPENSED, {"prescription_id": "p2"})
    assert table.get("p2") == Rx(state="issued")
    assert [(e.id, e.seq) for e in outbox.events()] == [(kept.id, 1), (after.id, 2)]

    await outbox.start()
    await receiver.wait_for(lambda r: len(r.accepted()) == 2)
    assert seqs(receiver.accepted()) == [1, 2]


async def test_events_can_be_read_back_in_pages_after_a_seq(outbox):
    recorded = [outbox.record(EventType.OFFERED, {"n": i}) for i in range(5)]
    assert outbox.events() == recorded
    assert [e.seq for e in outbox.events(after_seq=2, limit=2)] == [3, 4]
    assert outbox.events(after_seq=5) == []


# -- giving up, unsubscribing ----------------------------------------------------------------------
async def test_a_delivery_given_up_is_failed_and_the_next_event_goes(store, receiver, log):
    outbox = Outbox(store, "pharmacy", FAST.model_copy(update={"give_up_after_s": 0.3}))
    receiver.respond = lambda n, event: 500 if event["seq"] == 1 else 200
    sub = outbox.subscribe(SubscriptionCreate(url=receiver.url))
    await outbox.start()
    try:
        doomed = outbox.record(EventType.REFUSED, {"check_id": "c1", "reason": "expired"})
        outbox.record(EventType.PRESENTED, {"check_id": "c2"})
        outbox.record(EventType.DISPENSED, {"check_id": "c2"})
        await receiver.wait_for(lambda r: seqs(r.accepted()) == [2, 3])
    finally:
        await outbox.close()
    by_seq = {d.seq: d for d in outbox.deliveries(sub.subscription_id)}
    assert (by_seq[1].state, by_seq[1].last_status, by_seq[1].last_error) == ("failed", 500, "HTTP 500")
    assert by_seq[1].attempts >= 2 and by_seq[1].next_attempt_at is None and by_seq[1].delivered_at is None
    assert by_seq[2].state == "delivered"
    [warning] = [m for m in log.messages if "giving up" in m]
    assert doomed.id in warning and sub.subscription_id in warning
    assert not any(sub.secret in m for m in log.messages)


async def test_unsubscribing_stops_delivery_and_drops_what_was_pending(outbox, receiver, second_receiver):
    receiver.respond = lambda n, event: 503
    gone = outbox.subscribe(SubscriptionCreate(url=receiver.url))
    stays = outbox.subscribe(SubscriptionCreate(url=second_receiver.url))
    await outbox.start()
    outbox.record(EventType.OFFERED, {"prescription_id": "p1"})
    await receiver.wait_for(lambda r: len(r.received) >= 1)
    assert outbox.unsubscribe(gone.subscription_id) is True
    assert outbox.unsubscribe(gone.subscription_id) is False and outbox.unsubscribe("nope") is False
    outbox.record(EventType.ISSUED, {"prescription_id": "p1"})
    await second_receiver.wait_for(lambda r: seqs(r.accepted()) == [1, 2])
    assert outbox.deliveries(gone.subscription_id) == []
    assert {e["seq"] for e in (r.event for r in receiver.received)} == {1}
    assert outbox.subscription(gone.subscription_id).active is False
    assert outbox.subscription(stays.subscription_id).active is True


async def test_a_subscription_made_while_running_gets_a_worker(outbox, receiver):
    await outbox.start()
    outbox.record(EventType.OFFERED, {"prescription_id": "p0"})  # before it existed: not for it
    outbox.subscribe(SubscriptionCreate(url=receiver.url))
    outbox.record(EventType.ISSUED, {"prescription_id": "p1"})
    await receiver.wait_for(lambda r: len(r.accepted()) == 1)
    assert seqs(receiver.accepted()) == [2]


# -- secrets and validation ------------------------------------------------------------------------
async def test_the_secret_is_shown_once_and_never_listed(outbox, store):
    created = outbox.subscribe(SubscriptionCreate(url="https://pharmacy.example/erx", events=["prescription.dispensed"]))
    listed = outbox.subscriptions()
    assert [s.subscription_id for s in listed] == [created.subscription_id]
    assert all(type(s) is Subscription for s in listed)
    assert "secret" not in Subscription.model_fields
    assert created.secret not in json.dumps([s.model_dump(mode="json") for s in listed])
    assert created.secret not in outbox.subscription(created.subscription_id).model_dump_json()
    assert listed[0].events == [EventType.DISPENSED]
    outbox.unsubscribe(created.subscription_id)
    # an ended subscription's secret is not kept
    assert store.execute("SELECT secret FROM webhook_subscriptions").fetchone() == ("",)


def test_event_data_must_not_carry_the_tokens_secret_key(outbox):
    with pytest.raises(ValueError, match="secret key"):
        outbox.record(EventType.PRESENTED, {"prescription": {"token_secret_key": "0xabc"}})
    with pytest.raises(ValueError):
        outbox.record(EventType.ISSUED, {"token": [{"secret_key": "0xabc"}]})
    assert outbox.events() == []


def test_subscription_urls_are_absolute_http_urls():
    assert SubscriptionCreate(url=" https://pms.example:8443/hooks?x=1 ").url == "https://pms.example:8443/hooks?x=1"
    for bad in ("ftp://pms.example/", "/hooks", "http://", "https://pms example/", "http://pms:99999/",
                "https://x/" + "a" * 2000):
        with pytest.raises(ValidationError) as info:
            SubscriptionCreate(url=bad)
        assert info.value.errors()[0]["loc"] == ("url",)
    with pytest.raises(ValidationError, match="http:// or https://"):
        SubscriptionCreate(url="ftp://pms.example/")
    with pytest.raises(ValidationError):
        SubscriptionCreate(url="https://pms.example/", events=["prescription.eaten"])
    with pytest.raises(ValidationError):
        SubscriptionCreate(url="https://pms.example/", description="x" * 201)


def test_webhook_settings_come_from_the_environment(monkeypatch):
    assert Settings().webhooks == WebhookSettings()
    monkeypatch.setenv("ERX_WEBHOOKS__BACKOFF_MAX_S", "60")
    assert Settings().webhooks.backoff_max_s == 60
