"""Outgoing webhooks for integrators (practice software, pharmacy systems), through a durable outbox.

`Outbox.record()` writes an event, and one pending delivery per subscription that wants it, in the
controller's database (its SQLite file or PostgreSQL database, see `erx_core.store`) before anything
is sent; callers put it in the same `store.transaction()` as
the record change it announces, so the two commit together. One worker per subscription then POSTs
that subscription's deliveries strictly in `seq` order, retrying with backoff. A delivery is marked
only after the receiver answered 2xx, so a crash or restart resends at most the one in flight: a
receiver may see a duplicate (deduplicate by `id`) but never a gap, unless a delivery is given up
after `give_up_after_s` (the receiver can then catch up with the events endpoint).

Each request is signed: `Erx-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}." + body)>` with the
subscription's secret, and `Erx-Timestamp` is the same unix time in seconds (see `verify_signature`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, Field, field_validator

from erx_core.store import Dialect, Store

LOG = logging.getLogger("erx.webhooks")
SIGNATURE_VERSION = "v1"
MAX_PAGE = 1000
# Payloads announce what happened to a prescription; the token's one-time key is never part of that.
FORBIDDEN_KEY_PART = "secret_key"


class EventType(StrEnum):
    OFFERED = "prescription.offered"
    ISSUED = "prescription.issued"
    DECLINED = "prescription.declined"
    REVOKED = "prescription.revoked"
    FAILED = "prescription.failed"  # its token could not be created after the offer went out
    PRESENTED = "prescription.presented"
    DISPENSED = "prescription.dispensed"
    REFUSED = "prescription.refused"


class WebhookSettings(BaseModel):
    """Delivery policy of a controller's outgoing webhooks (env `ERX_WEBHOOKS__*`)."""

    timeout_s: float = Field(default=10.0, gt=0)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    # Measured from the event's creation: after this, a delivery is marked failed and the next one goes.
    give_up_after_s: float = Field(default=3 * 24 * 3600.0, gt=0)
    signature_tolerance_s: int = Field(default=300, gt=0)


class WebhookEvent(BaseModel):
    """The envelope POSTed to subscribers (its JSON is the request body)."""

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    type: EventType
    seq: int
    created_at: datetime
    source: str
    data: dict[str, Any]


class SubscriptionCreate(BaseModel):
    url: str = Field(max_length=2000, json_schema_extra={"format": "uri", "pattern": "^https?://[^\\s/]+"},
                     examples=["https://practice.example.org/erx-events"])
    events: list[EventType] = Field(default_factory=list, description="empty: every event type")
    description: str = Field(default="", max_length=200)

    @field_validator("url")
    @classmethod
    def _absolute_http_url(cls, url: str) -> str:
        url = url.strip()
        try:
            parts = urlsplit(url)
            parts.port  # raises on a malformed port
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok or any(c.isspace() for c in url):
            raise ValueError("must be an absolute http:// or https:// URL, e.g. https://example.org/erx-events")
        return url

    @field_validator("events")
    @classmethod
    def _unique(cls, events: list[EventType]) -> list[EventType]:
        return list(dict.fromkeys(events))


class Subscription(BaseModel):
    subscription_id: str
    url: str
    events: list[EventType]
    description: str
    created_at: datetime
    active: bool


class SubscriptionCreated(Subscription):
    """Returned once, when the subscription is made: the only time the secret leaves the controller."""

    secret: str


class Delivery(BaseModel):
    event_id: str
    seq: int
    event_type: EventType
    subscription_id: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_error: str | None
    last_status: int | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None


# -- signatures ---------------------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Erx-Signature` header value for `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def verify_signature(secret: str, body: bytes, timestamp_header: str, signature_header: str, *,
                     tolerance_s: int = 300, now: float | None = None) -> bool:
    """True if `signature_header` signs exactly `body` at `timestamp_header` with `secret`, and that
    timestamp is within `tolerance_s` of now (so a captured request cannot be replayed later)."""
    try:
        timestamp = int(timestamp_header)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).encode()
    # Several comma-separated signatures are accepted, so a future secret rotation can send old and new.
    return any(hmac.compare_digest(candidate.strip().encode(), expected)
               for candidate in (signature_header or "").split(","))


# -- the outbox -----------------------------------------------------------------------------------
def _schema(dialect: Dialect) -> tuple[str, ...]:
    return (
        dialect.create_table("webhook_events", """
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            body TEXT NOT NULL"""),
        dialect.create_table("webhook_subscriptions", """
            subscription_id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            events TEXT NOT NULL,
            description TEXT NOT NULL,
            secret TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            active INTEGER NOT NULL""", ordered=True),
        dialect.create_table("webhook_deliveries", """
            subscription_id TEXT NOT NULL,
            seq INTEGER NOT NULL REFERENCES webhook_events (seq),
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            last_status INTEGER,
            next_attempt_at DOUBLE PRECISION,
            delivered_at DOUBLE PRECISION,
            PRIMARY KEY (subscription_id, seq)"""),
        # A worker's "next delivery" lookup must not scan the subscription's delivered history.
        """CREATE INDEX IF NOT EXISTS webhook_deliveries_pending
            ON webhook_deliveries (subscription_id, seq) WHERE state = 'pending'""",
    )


class _Head(BaseModel):
    """The next pending delivery of a subscription, with what sending it needs."""

    seq: int
    event_id: str
    event_type: str
    created: float
    body: str
    attempts: int
    next_attempt_at: float


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _has_forbidden_key(value: Any) -> bool:
    if isinstance(value, dict):
        return any(FORBIDDEN_KEY_PART in str(k).lower() or _has_forbidden_key(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_forbidden_key(v) for v in value)
    return False


class Outbox:
    def __init__(self, store: Store, source: str, settings: WebhookSettings):
        # every statement goes through the store's `execute`, which speaks the store's dialect
        self._store, self.source, self.settings = store, source, settings
        store.create_schema(*_schema(store.dialect))
        self._session: aiohttp.ClientSession | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    # -- writing events ---------------------------------------------------------------------------
    def record(self, type: EventType, data: dict[str, Any]) -> WebhookEvent:
        """Durably add an event and its pending deliveries; returns once both are committed (or, inside
        the caller's `store.transaction()`, commit or roll back with it)."""
        type = EventType(type)
        if _has_forbidden_key(data):
            raise ValueError(f"a {type} event's data must not carry a secret key")
        with self._store.transaction():
            (seq,) = self._store.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM webhook_events").fetchone()
            event = WebhookEvent(type=type, seq=seq, created_at=datetime.now(UTC), source=self.source, data=data)
            created = event.created_at.timestamp()
            self._store.execute("INSERT INTO webhook_events (seq, id, type, created, body) VALUES (?, ?, ?, ?, ?)",
                             (seq, event.id, type.value, created, event.model_dump_json()))
            targets = [sid for sid, events in self._store.execute(
                "SELECT subscription_id, events FROM webhook_subscriptions WHERE active = 1")
                if not (wanted := json.loads(events)) or type.value in wanted]
            self._store.executemany(
                "INSERT INTO webhook_deliveries (subscription_id, seq, state, next_attempt_at) "
                "VALUES (?, ?, 'pending', ?)", [(sid, seq, created) for sid in targets])
        # Wake workers only once the rows are committed (or rolled back: they then find nothing new).
        self._store.after_transaction(lambda: self._wake_workers(targets))
        return event

    def events(self, after_seq: int = 0, limit: int = 100) -> list[WebhookEvent]:
        """Events with `seq > after_seq`, oldest first: how a receiver catches up or replays."""
        rows = self._store.execute("SELECT body FROM webhook_events WHERE seq > ? ORDER BY seq LIMIT ?",
                                (after_seq, max(1, min(limit, MAX_PAGE))))
        return [WebhookEvent.model_validate_json(body) for (body,) in rows]

    # -- subscriptions ----------------------------------------------------------------------------
    def subscribe(self, body: SubscriptionCreate) -> SubscriptionCreated:
        """A new subscription, receiving events recorded from now on. Its secret is in the answer only."""
        sub = SubscriptionCreated(subscription_id=str(uuid.uuid4()), url=body.url, events=body.events,
                                  description=body.description, created_at=datetime.now(UTC), active=True,
                                  secret=f"whsec_{secrets.token_urlsafe(32)}")
        self._store.execute(f"INSERT INTO webhook_subscriptions ({self._SUB_COLUMNS}, secret) VALUES (?, ?, ?, ?, ?, 1, ?)",
                         (sub.subscription_id, sub.url, json.dumps([e.value for e in sub.events]),
                          sub.description, sub.created_at.timestamp(), sub.secret))
        if self._session is not None:
            self._store.after_transaction(lambda: self._spawn(sub.subscription_id))
        return sub

    def subscriptions(self) -> list[Subscription]:
        rows = self._store.execute(f"SELECT {self._SUB_COLUMNS} FROM webhook_subscriptions "
                                f"ORDER BY created, {self._store.dialect.position}")
        return [self._subscription(row) for row in rows]

    def subscription(self, subscription_id: str) -> Subscription | None:
        row = self._store.execute(f"SELECT {self._SUB_COLUMNS} FROM webhook_subscriptions WHERE subscription_id = ?",
                               (subscription_id,)).fetchone()
        return self._subscription(row) if row else None

    def unsubscribe(self, subscription_id: str) -> bool:
        """Stop delivering to a subscription and drop its pending deliveries. False if it was not active.
        The subscription stays listed (inactive) with its delivery history; its secret is erased."""
        with self._store.transaction():
            changed = self._store.execute(
                "UPDATE webhook_subscriptions SET active = 0, secret = '' WHERE subscription_id = ? AND active = 1",
                (subscription_id,)).rowcount
            self._store.execute("DELETE FROM webhook_deliveries WHERE subscription_id = ? AND state = 'pending'",
                             (subscription_id,))
        if changed:
            # Once committed: inside a caller's transaction that rolls back, the subscription stays active.
            self._store.after_transaction(lambda: self._stop_if_inactive(subscription_id))
        return bool(changed)

    def deliveries(self, subscription_id: str, limit: int = 100) -> list[Delivery]:
        """A subscription's deliveries, newest first."""
        rows = self._store.execute(
            "SELECT e.id, d.seq, e.type, d.subscription_id, d.state, d.attempts, d.last_error, d.last_status, "
            "d.next_attempt_at, d.delivered_at FROM webhook_deliveries d JOIN webhook_events e ON e.seq = d.seq "
            "WHERE d.subscription_id = ? ORDER BY d.seq DESC LIMIT ?",
            (subscription_id, max(1, min(limit, MAX_PAGE))))
        return [Delivery(event_id=eid, seq=seq, event_type=etype, subscription_id=sid, state=state, attempts=attempts,
                         last_error=error, last_status=status,
                         next_attempt_at=_utc(next_at) if state == "pending" else None, delivered_at=_utc(done))
                for eid, seq, etype, sid, state, attempts, error, status, next_at, done in rows]

    _SUB_COLUMNS = "subscription_id, url, events, description, created, active"

    @staticmethod
    def _subscription(row: tuple) -> Subscription:
        sid, url, events, description, created, active = row
        return Subscription(subscription_id=sid, url=url, events=json.loads(events), description=description,
                            created_at=_utc(created), active=bool(active))

    # -- delivery ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start one delivery worker per active subscription in the running event loop; pending
        deliveries left by a previous run resume."""
        if self._session is not None:
            return
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
                                              headers={"User-Agent": "erx-webhooks/1"})
        for (sid,) in self._store.execute("SELECT subscription_id FROM webhook_subscriptions WHERE active = 1").fetchall():
            self._spawn(sid)

    async def close(self) -> None:
        """Stop the workers. Whatever they had not marked delivered is sent again by the next `start()`."""
        tasks = [*self._workers.values(), *self._stopping]
        self._workers.clear()
        self._wake.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._stopping.clear()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _spawn(self, subscription_id: str) -> None:
        if self._session is None or subscription_id in self._workers:
            return
        self._wake[subscription_id] = asyncio.Event()
        task = asyncio.create_task(self._work(subscription_id), name=f"webhooks:{subscription_id}")
        self._workers[subscription_id] = task
        task.add_done_callback(lambda t: self._forget(subscription_id, t))

    def _stop_if_inactive(self, subscription_id: str) -> None:
        row = self._store.execute("SELECT active FROM webhook_subscriptions WHERE subscription_id = ?",
                               (subscription_id,)).fetchone()
        if row is None or not row[0]:
            self._stop(subscription_id)

    def _stop(self, subscription_id: str) -> None:
        self._wake.pop(subscription_id, None)
        task = self._workers.pop(subscription_id, None)
        if task is not None:
            task.cancel()
            self._stopping.add(task)  # so close() can still await it

    def _forget(self, subscription_id: str, task: asyncio.Task[None]) -> None:
        self._stopping.discard(task)
        if self._workers.get(subscription_id) is task:
            del self._workers[subscription_id]
            self._wake.pop(subscription_id, None)

    def _wake_workers(self, subscription_ids: list[str]) -> None:
        for sid in subscription_ids:
            if (wake := self._wake.get(sid)) is not None:
                wake.set()

    async def _work(self, subscription_id: str) -> None:
        wake = self._wake[subscription_id]
        while True:
            wake.clear()  # before reading, so a record() after the read is not missed
            try:
                if self._store.in_transaction:
                    # Someone awaits inside store.transaction(): its rows may still roll back, never send them.
                    self._store.after_transaction(wake.set)
                    await wake.wait()
                    continue
                row = self._store.execute("SELECT url, secret, active FROM webhook_subscriptions "
                                       "WHERE subscription_id = ?", (subscription_id,)).fetchone()
                if row is None or not row[2]:
                    return
                url, secret, _ = row
                head = self._head(subscription_id)
                if head is None:
                    await wake.wait()
                    continue
                if (delay := head.next_attempt_at - time.time()) > 0:
                    # Later events wait behind this one: that is what keeps the receiver's sequence gap-free.
                    await asyncio.sleep(delay)
                    continue
                await self._attempt(subscription_id, url, secret, head)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Not the receiver's fault (that is handled in _attempt): e.g. the database. Try again later.
                LOG.exception("webhook worker for subscription %s failed", subscription_id)
                await asyncio.sleep(min(self.settings.backoff_max_s, 30))

    def _head(self, subscription_id: str) -> _Head | None:
        row = self._store.execute(
            "SELECT d.seq, e.id, e.type, e.created, e.body, d.attempts, d.next_attempt_at "
            "FROM webhook_deliveries d JOIN webhook_events e ON e.seq = d.seq "
            "WHERE d.subscription_id = ? AND d.state = 'pending' ORDER BY d.seq LIMIT 1",
            (subscription_id,)).fetchone()
        if row is None:
            return None
        return _Head(**dict(zip(_Head.model_fields, row)))

    async def _attempt(self, subscription_id: str, url: str, secret: str, head: _Head) -> None:
        assert self._session is not None
        body = head.body.encode()
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", "Erx-Event-Id": head.event_id,
                   "Erx-Event-Type": head.event_type, "Erx-Timestamp": str(timestamp),
                   "Erx-Signature": sign(secret, timestamp, body)}
        status: int | None = None
        error: str | None = None
        try:
            # Redirects are not followed: a receiver must answer at the URL it subscribed.
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                status = response.status
        except Exception as exc:  # timeouts, refused connections, resets, bad hosts: all retried
            error = f"{type(exc).__name__}: {exc}"[:500] if str(exc) else type(exc).__name__
        now = time.time()
        attempts = head.attempts + 1
        where = (subscription_id, head.seq)
        if status is not None and 200 <= status < 300:
            self._store.execute(
                "UPDATE webhook_deliveries SET state = 'delivered', attempts = ?, last_status = ?, last_error = NULL, "
                "next_attempt_at = NULL, delivered_at = ? WHERE subscription_id = ? AND seq = ? AND state = 'pending'",
                (attempts, status, now, *where))
            return
        error = error or f"HTTP {status}"
        deadline = head.created + self.settings.give_up_after_s
        if now >= deadline:
            self._store.execute(
                "UPDATE webhook_deliveries SET state = 'failed', attempts = ?, last_status = ?, last_error = ?, "
                "next_attempt_at = NULL WHERE subscription_id = ? AND seq = ? AND state = 'pending'",
                (attempts, status, error, *where))
            LOG.warning("webhook event %s (seq %d, %s) not delivered to subscription %s after %d attempts; "
                        "giving up (last error: %s)", head.event_id, head.seq, head.event_type, subscription_id,
                        attempts, error)
            return
        # The last retry happens at the deadline, so a receiver back just in time still gets the event.
        next_at = min(now + self._backoff(attempts), deadline)
        self._store.execute(
            "UPDATE webhook_deliveries SET attempts = ?, last_status = ?, last_error = ?, next_attempt_at = ? "
            "WHERE subscription_id = ? AND seq = ? AND state = 'pending'", (attempts, status, error, next_at, *where))
        LOG.debug("webhook event %s to subscription %s failed (attempt %d: %s); next try in %.1f s",
                  head.event_id, subscription_id, attempts, error, next_at - now)

    def _backoff(self, failures: int) -> float:
        base = self.settings.backoff_initial_s * 2 ** min(failures - 1, 62)
        # Jitter, so receivers coming back are not hit by every controller in the same instant.
        return min(self.settings.backoff_max_s, base * random.uniform(0.9, 1.1))
