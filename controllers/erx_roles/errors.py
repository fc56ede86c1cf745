"""The roles' refusals, in the domain's words: what is wrong with a record or a request, not how HTTP
says it. Services, managers and pages raise these; `erx_roles.http.http_error` maps each kind to its
HTTP status, JSON body and headers, in one place (the API's error middleware and the pages use it).

    kind             meaning                                                        HTTP
    NotFound         no such record (prescription, check, connection, …)            404
    Conflict         the record's state does not allow this (details: the record)   409
    InvalidRequest   what was given cannot be used (e.g. a link without invitation) 422
    UpstreamRefused  the chain or the agent answered, and refused                   502
    Unavailable      an upstream system did not answer or confirm: nothing final    503 (+ Retry-After)
"""

from __future__ import annotations

from typing import Any

RETRY_AFTER_S = 5


class DomainError(Exception):
    """A refusal the caller can act on: a reason a person can read, and details for the answer
    (e.g. `check=` the check as it is now)."""

    def __init__(self, reason: str, **details: Any):
        super().__init__(reason)
        self.reason, self.details = reason, details


class NotFound(DomainError):
    """No such record."""


class Conflict(DomainError):
    """The record is in a state that does not allow this (already final, not active, not onboarded…)."""


class InvalidRequest(DomainError):
    """What was given cannot be used: an invitation link that carries none, one the wallet refuses."""


class UpstreamRefused(DomainError):
    """An upstream system (the chain, the organisation's agent) answered, and refused."""


class Unavailable(DomainError):
    """An upstream system (agent, chain, pool, tails) did not answer or has not confirmed yet: nothing
    final was decided and the record concerned stays retryable. `retry_after`: seconds until asking
    again is worth it (None: not said)."""

    def __init__(self, reason: str, *, retry_after: int | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


def not_found(what: str) -> NotFound:
    return NotFound(f"{what} not found")


def unavailable(what: str) -> Unavailable:
    """A transient fault of an upstream system (agent, chain, pool, tails). The record concerned stays
    as it was, retryable; a transient fault is never a final answer."""
    return Unavailable(f"{what}; nothing was decided, retry in a few seconds", retry_after=RETRY_AFTER_S)
