"""API tokens: the organisation's operator token, and one token per integrator (staff members' own
tokens: erx_core.staff, erx_roles.staff_api).

The operator token (generated into `.erx/secrets.json`, used by `erx` itself) may do everything,
including managing integrators. Each integrator — practice software, a pharmacy system, an insurer —
gets its own token, shown once when it is created and kept only as a SHA-256 hash, so that it can be
revoked on its own and a leaked database does not leak usable tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from enum import StrEnum
from typing import Callable

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from erx_core.audit import AuditAction
from erx_core.staff import Action
from erx_core.store import Store
from erx_roles.api import Api
from erx_roles.errors import not_found
from erx_roles.http import CALLER, ApiError, Caller

TOKEN_PREFIX = "erx_"


class Scope(StrEnum):
    """What an integrator token may do beyond the organisation's everyday work. The operator token may
    do everything; an integrator only what its scopes name."""

    TRUST_LIST = "trust-list"  # change which prescribers a pharmacy trusts


class IntegratorCreate(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100, examples=["Practice software"])
    description: str = Field(default="", max_length=300)
    scopes: list[Scope] = Field(default=[], max_length=len(Scope), description="extra powers; none by default")


class Integrator(BaseModel):
    integrator_id: str
    name: str
    description: str = ""
    token_hint: str = Field(description="the token's last four characters, to tell tokens apart")
    scopes: list[Scope] = []
    created_at: float


class IntegratorCreated(Integrator):
    token: str = Field(description="the bearer token; shown only now, store it in the integrator's vault")


class _StoredIntegrator(Integrator):
    token_sha256: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Integrators:
    def __init__(self, store: Store, operator_token: SecretStr):
        self._table = store.table("integrator", _StoredIntegrator)
        self._operator_digest = _digest(operator_token.get_secret_value())
        self._by_digest = {i.token_sha256: i for i in self._table.all()}
        self.on_remove: list[Callable[[str], None]] = []  # e.g. dropping the integrator's webhook subscriptions

    def authenticate(self, authorization: str) -> Caller | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        digest = _digest(token.strip())
        if hmac.compare_digest(digest, self._operator_digest):
            return Caller(name="operator")
        found = self._by_digest.get(digest)  # a hash lookup: timing reveals nothing about the token
        return Caller(name=found.name, integrator_id=found.integrator_id, scopes=set(found.scopes)) if found else None

    def operator_only(self, authorization: str) -> Caller | None:
        caller = self.authenticate(authorization)
        return caller if caller is not None and caller.is_operator else None

    def create(self, body: IntegratorCreate) -> IntegratorCreated:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        stored = _StoredIntegrator(integrator_id=str(uuid.uuid4()), name=body.name, description=body.description,
                                   token_hint=token[-4:], scopes=sorted(set(body.scopes)), created_at=time.time(),
                                   token_sha256=_digest(token))
        self._table.put(stored.integrator_id, stored)
        self._by_digest[stored.token_sha256] = stored
        return IntegratorCreated(**stored.model_dump(exclude={"token_sha256"}), token=token)

    def all(self) -> list[Integrator]:
        return [Integrator(**i.model_dump(exclude={"token_sha256"})) for i in self._table.all()]

    def remove(self, integrator_id: str) -> bool:
        found = self._table.get(integrator_id)
        if found is None:
            return False
        self._table.delete(integrator_id)
        self._by_digest.pop(found.token_sha256, None)
        return True

    def api(self) -> Api:
        api = Api("integrators")
        tag = "integrators"

        @api.operation("POST", "/api/integrators", summary="Create an integrator and its API token", tag=tag,
                       body=IntegratorCreate, response=IntegratorCreated, status=201, operator_only=True,
                       action=Action.MANAGE_INTEGRATORS, audit=AuditAction.INTEGRATOR_ADDED)
        async def create_integrator(_: web.Request, body: IntegratorCreate) -> IntegratorCreated:
            """The token is in this answer only; the controller keeps just its hash."""
            return self.create(body)

        @api.operation("GET", "/api/integrators", summary="List integrators (without tokens)", tag=tag,
                       response=list[Integrator], operator_only=True, action=Action.MANAGE_INTEGRATORS)
        async def list_integrators(_: web.Request) -> list[Integrator]:
            return self.all()

        @api.operation("DELETE", "/api/integrators/{integrator_id}", summary="Revoke an integrator's token",
                       tag=tag, errors=(404,), operator_only=True, action=Action.MANAGE_INTEGRATORS,
                       audit=AuditAction.INTEGRATOR_REMOVED)
        async def remove_integrator(_: web.Request, integrator_id: str) -> None:
            """Its webhook subscriptions are removed too."""
            if not self.remove(integrator_id):
                raise not_found(f"integrator {integrator_id}")
            for hook in self.on_remove:
                hook(integrator_id)

        return api


def caller_of(request: web.Request) -> Caller:
    caller = request.get(CALLER)
    if caller is None:  # only public operations run without one, and they do not ask
        raise ApiError(401, "missing or wrong API token (Authorization: Bearer …)")
    return caller
