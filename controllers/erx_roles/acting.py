"""Who is acting, and the audit trail of what they did: one mechanism for the REST API and the pages.

An audited action runs inside `audited(...)`, which the REST API's operation wrapper
(`erx_roles.api`) and the pages' `page_action` decorator (`erx_roles.pages.web`) call; nothing else
writes the trail of people's actions. It records one entry per service call the action made (`watch`
marks the services' people-facing methods: issue, revoke, request a check, dispense), each with the
prescription or check it concerned and how that call ended, even when a page turned a refusal into a
message; an action that reached no service call (refused, invalid) gets one entry with the answer's
status. The service never learns who acted beyond what it is handed (the prescriber).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, TypeVar

from aiohttp import web
from pydantic import BaseModel

from erx_contracts.errors import ChainUnavailable, TransactionTimeout
from erx_core.acapy_admin import AdminApiError, AgentUnreachable
from erx_core.audit import AuditAction, AuditLog, Outcome, Via, is_subject, outcome_of
from erx_core.staff import StaffMember, StaffRole
from erx_core.store import UnreadableRecord
from erx_roles.errors import DomainError
from erx_roles.http import ApiError, Caller, http_error

LOG = logging.getLogger("erx.audit")
T = TypeVar("T")
AUDIT_LOG = web.AppKey("erx_audit_log", AuditLog)
# the record fields an entry names its subject by, wherever they are found (path, form, body, answer)
SUBJECT_FIELDS = ("prescription_id", "check_id")
TARGET_FIELDS = ("username", "integrator_id", "cred_def_id")
REFUSED_STATES = ("refused", "failed", "declined")


class Who(BaseModel):
    username: str | None = None
    role: StaffRole | None = None
    via: Via
    integrator_id: str | None = None


def who_called(caller: Caller | None) -> Who:
    if caller is None:
        return Who(via=Via.OPERATOR_TOKEN)
    person = caller.person
    return Who(username=person.username if person else None, role=person.role if person else None,
               via=caller.via, integrator_id=caller.integrator_id)


def who_signed_in(member: StaffMember) -> Who:
    return Who(username=member.username, role=member.role, via=Via.PAGE)


def subject_of(*sources: Any) -> dict[str, str]:
    """The ids an action concerned, from mappings (path, form) and models (body, answer), later ones
    winning: its prescription, its check, and the target of an administrative action."""
    found: dict[str, str] = {}
    for source in sources:
        if source is None:
            continue
        get = source.get if isinstance(source, Mapping) else lambda name, s=source: getattr(s, name, None)
        for name in (*SUBJECT_FIELDS, *TARGET_FIELDS):
            value = get(name)
            if isinstance(value, str) and value:
                found["target" if name in TARGET_FIELDS else name] = value
        presented = get("prescription")  # a pharmacy check: the prescription it was shown
        if isinstance(presented, Mapping) and isinstance(presented.get("prescription_id"), str):
            found["prescription_id"] = presented["prescription_id"]
    return found


def failure_of(exc: BaseException) -> tuple[int, str]:
    """The HTTP status an exception is answered with (erx_roles.http decides them), and its reason."""
    if isinstance(exc, web.HTTPException):
        return exc.status, exc.reason if exc.status >= 400 else ""
    if isinstance(exc, ApiError):
        return exc.status, exc.reason
    if isinstance(exc, DomainError):
        return http_error(exc).status, exc.reason
    if isinstance(exc, UnreadableRecord):
        return 409, "a record cannot be read"
    if isinstance(exc, AgentUnreachable):
        return 503, "the organisation's agent did not answer"
    if isinstance(exc, AdminApiError):
        return (503, "the organisation's agent failed") if exc.status >= 500 else (502, "the agent refused")
    if isinstance(exc, (ChainUnavailable, TransactionTimeout)):
        return 503, "the chain did not answer"
    if isinstance(exc, asyncio.CancelledError):
        return 499, "the request was abandoned"
    return 500, "internal error"


@dataclass
class _Call:
    subject: dict[str, str]
    status: int | None = None  # None: as the action's answer
    reason: str | None = None


@dataclass
class _Trail:
    calls: list[_Call] = field(default_factory=list)
    open: bool = True


_TRAIL: ContextVar[_Trail | None] = ContextVar("erx_audit_trail", default=None)
_IN_CALL: ContextVar[bool] = ContextVar("erx_audit_in_call", default=False)  # a call inside one is its business


def watch(service: Any, *methods: str) -> None:
    """Make each of `service`'s named coroutine methods note its call in the audited action running it
    (its subject and how it ended); outside one (a background task, start-up) a call notes nothing."""
    for name in methods:
        method = getattr(service, name, None)
        if method is None:
            LOG.warning("audit: %s has no method %s to watch", type(service).__name__, name)
            continue

        @functools.wraps(method)
        async def noted(*args, __method=method, **kwargs):
            trail = _TRAIL.get()
            if trail is None or not trail.open or _IN_CALL.get():
                return await __method(*args, **kwargs)
            inside = _IN_CALL.set(True)
            try:
                result = await __method(*args, **kwargs)
            except BaseException as exc:
                status, reason = failure_of(exc)
                trail.calls.append(_Call({}, status, reason))
                raise
            finally:
                _IN_CALL.reset(inside)
            for item in _items(result):
                trail.calls.append(_noted(item))
            return result

        setattr(service, name, noted)


def _items(result: Any) -> list:
    """What a call returned, one item per subject: a therapy's parts, or a printout's records."""
    if isinstance(result, list):
        return result
    if isinstance(result, tuple) and (records := next((p for p in result if isinstance(p, list)), None)):
        return records  # e.g. (the paper prescriptions, their PDF)
    return [result]


def _noted(result: Any) -> _Call:
    if isinstance(result, tuple):  # (record, what came with it): the first part naming a subject
        result = next((part for part in result if subject_of(part)), result[0] if result else None)
    call = _Call(subject_of(result))
    state = str(getattr(result, "state", "") or "")
    if state in REFUSED_STATES:  # e.g. dispensed by another pharmacy meanwhile, or the offer failed
        refusal = getattr(result, "refusal", None)
        call.status, call.reason = 409, f"ended {state}" + (f": {refusal.reason}" if refusal is not None else "")
    return call


def record(log: AuditLog | None, who: Who, action: AuditAction, subject: Mapping[str, str], status: int,
           reason: str | None = None) -> None:
    """Append one entry; an id that is not of its field's format is left out, and a failed write is
    logged, never raised (the action is done by now)."""
    if log is None:
        return
    fields = {**who.model_dump(), "action": action, "status": status, "outcome": outcome_of(status),
              "reason": reason if outcome_of(status) != Outcome.OK else None}
    for name, value in subject.items():
        if is_subject(name, value):  # a malformed id is left out, the entry kept
            fields[name] = value
        else:
            LOG.warning("audit: the %s of a %s entry is not a valid id; left out", name, action)
    try:
        log.record(**fields)
    except Exception:
        LOG.exception("audit: could not record %s by %s", action, who.username or who.via)


async def audited(log: AuditLog | None, who: Who, action: AuditAction, subject: Mapping[str, str],
                  run: Callable[[], Awaitable[T]], status_of: Callable[[T], int],
                  subject_of_result: Callable[[T], Mapping[str, str]] = lambda _: {}) -> T:
    """Run an action and record it: one entry per noted service call, or one for the action."""
    trail = _Trail()
    token = _TRAIL.set(trail)
    try:
        result = await run()
    except BaseException as exc:
        status, reason = failure_of(exc)
        _write(log, who, action, dict(subject), trail, status, reason)
        raise
    finally:
        trail.open = False
        _TRAIL.reset(token)
    _write(log, who, action, {**subject, **subject_of_result(result)}, trail, status_of(result), None)
    return result


def _write(log: AuditLog | None, who: Who, action: AuditAction, subject: dict[str, str], trail: _Trail,
           status: int, reason: str | None) -> None:
    if not trail.calls:
        record(log, who, action, subject, status, reason)
    for call in trail.calls:
        record(log, who, action, {**subject, **call.subject}, call.status or status,
               call.reason if call.status else reason)
