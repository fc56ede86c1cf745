"""What every controller's JSON API shares: bearer-token auth, errors as 4xx with a reason (never a
stack trace), JSON bodies validated by pydantic models."""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

LOG = logging.getLogger("erx.api")
M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """A refusal the caller can act on: HTTP status + reason."""

    def __init__(self, status: int, reason: str, **extra: Any):
        super().__init__(reason)
        self.status, self.reason, self.extra = status, reason, extra


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found")


def json_response(data: Any, status: int = 200) -> web.Response:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    return web.json_response(data, status=status)


async def parse_body(request: web.Request, model: type[M]) -> M:
    try:
        raw = await request.read()
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise ApiError(422, "invalid request body", fields=field_problems(exc)) from None


def field_problems(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)]


class Caller(BaseModel):
    """Who is calling the API: the organisation's operator, or one of its integrators."""

    name: str
    integrator_id: str | None = None
    scopes: set[str] = set()

    @property
    def is_operator(self) -> bool:
        return self.integrator_id is None

    def may(self, scope: str | None) -> bool:
        """May this caller use an operation that needs `scope` (None: any authenticated caller)?"""
        return scope is None or self.is_operator or scope in self.scopes


Authenticate = Callable[[str], Caller | None]
CALLER = web.RequestKey("caller", Caller)


def api_middlewares(authenticate: Authenticate, public_paths: Callable[[], set[str]] = set) -> list:
    """JSON errors for everything, and a bearer token for every `/api/` path that is not public.
    `authenticate` maps the Authorization header to the caller (None: refused)."""

    @web.middleware
    async def errors(request: web.Request, handler):
        try:
            return await handler(request)
        except ApiError as exc:
            return web.json_response({"error": exc.reason, **exc.extra}, status=exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return web.json_response({"error": exc.reason if not exc.text else exc.text}, status=exc.status)
        except Exception:
            LOG.exception("unhandled error in %s %s", request.method, request.path)
            return web.json_response({"error": "internal error; see the controller log"}, status=500)

    @web.middleware
    async def auth(request: web.Request, handler):
        if request.path.startswith("/api/") and request.path not in public_paths():
            caller = authenticate(request.headers.get("Authorization", ""))
            if caller is None:
                raise ApiError(401, "missing or wrong API token (Authorization: Bearer …)")
            request[CALLER] = caller
        return await handler(request)

    return [errors, auth]
