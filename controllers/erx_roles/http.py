"""What every controller's JSON API shares: bearer-token auth, errors as 4xx with a reason (never a
stack trace), JSON bodies validated by pydantic models.

Errors become HTTP answers here, in one place: the services' domain errors (`erx_roles.errors`, by
`http_error`) and the agent's and the chain's faults (in the error middleware)."""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Callable, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from erx_contracts.errors import ChainUnavailable, TransactionTimeout
from erx_core.acapy_admin import AdminApiError, AgentUnreachable
from erx_core.audit import Via
from erx_core.staff import ACTION_TEXT, Action, StaffMember, a_role, may, needs_person
from erx_core.store import UnreadableRecord
from erx_roles.errors import (Conflict, DomainError, InvalidRequest, NotFound, Unavailable, UpstreamRefused,
                              unavailable)
from erx_schemas.prescription import PrescribingRules, input_context

LOG = logging.getLogger("erx.api")
M = TypeVar("M", bound=BaseModel)
# the practice's prescribing defaults and limits, applied to every order that enters (`parse_body`)
PRESCRIBING_RULES = web.AppKey("erx_prescribing_rules", PrescribingRules)
# A request body larger than this is refused with 413 before it is parsed. aiohttp's own limit
# (client_max_size) is 1 MiB; the largest body here, a FHIR MedicationRequest, is a few KiB.
MAX_BODY_BYTES = 256 * 1024


class ApiError(Exception):
    """A refusal the caller can act on: HTTP status + reason."""

    def __init__(self, status: int, reason: str, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(reason)
        self.status, self.reason, self.extra, self.headers = status, reason, extra, headers or {}


# The domain's refusals (erx_roles.errors) as HTTP statuses: here and nowhere else.
HTTP_STATUS: dict[type[DomainError], int] = {NotFound: 404, Conflict: 409, InvalidRequest: 422, UpstreamRefused: 502,
                                             Unavailable: 503}


def http_error(exc: DomainError) -> ApiError:
    """A domain error as the HTTP answer: its status, `{"error": reason, **details}`, and for an
    `Unavailable` that says when to retry, a Retry-After header."""
    status = next((HTTP_STATUS[kind] for kind in type(exc).__mro__ if kind in HTTP_STATUS), 500)
    retry_after = exc.retry_after if isinstance(exc, Unavailable) else None
    return ApiError(status, exc.reason, headers={"Retry-After": str(retry_after)} if retry_after is not None else None,
                    **exc.details)


def json_response(data: Any, status: int = 200) -> web.Response:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    return web.json_response(data, status=status)


async def parse_body(request: web.Request, model: type[M]) -> M:
    """The body as `model`, strictly: a JSON object (an empty body counts as `{}`) of at most
    MAX_BODY_BYTES, in UTF-8, without duplicate keys or non-finite numbers, whose values have the JSON
    types the model declares (no "2" for 2, no true for 1) and no fields it does not declare. Validated
    with `input_context()`: what enters must also be valid today (e.g. a prescription's start)."""
    raw = await _read_capped(request)
    _check_json_object(raw or b"{}")
    try:
        return model.model_validate_json(raw or b"{}", strict=True, extra="forbid",
                                         context=input_context(rules=request.config_dict.get(PRESCRIBING_RULES)))
    except ValidationError as exc:
        raise ApiError(422, "invalid request body", fields=field_problems(exc)) from None


def _too_large() -> ApiError:
    return ApiError(413, f"the request body is larger than {MAX_BODY_BYTES // 1024} KiB")


async def _read_capped(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _too_large()  # refused before a byte of it is read
    raw = await request.read()  # a chunked body: aiohttp stops at client_max_size (1 MiB) with its own 413
    if len(raw) > MAX_BODY_BYTES:
        raise _too_large()
    return raw


def _body_problem(message: str) -> ApiError:
    return ApiError(422, "invalid request body", fields=[{"field": "(body)", "message": message}])


def _check_json_object(raw: bytes) -> None:
    """What pydantic's JSON parser lets through: duplicate keys (the last would win), NaN and Infinity,
    and a top level that is not an object (told as such, not as a type error of the model)."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        document = dict(items)
        if len(document) != len(items):
            seen: set[str] = set()
            duplicate = next(key for key, _ in items if key in seen or seen.add(key))
            raise ValueError(f"the key {duplicate[:60]!r} appears twice in one object")
        return document

    def finite(text: str) -> float:
        number = float(text)
        if not math.isfinite(number):
            raise ValueError(f"the number {text[:40]} is out of range")
        return number

    def constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        document = json.loads(raw.decode("utf-8"), object_pairs_hook=pairs, parse_float=finite,
                              parse_constant=constant)
    except UnicodeDecodeError:
        raise _body_problem("the body is not UTF-8 text") from None
    except RecursionError:
        raise _body_problem("the JSON is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise _body_problem(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise _body_problem(str(exc)) from None
    if not isinstance(document, dict):
        raise _body_problem(f"the body must be a JSON object, not {_json_kind(document)}")


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def field_problems(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)]


class Caller(BaseModel):
    """Who is calling the API: the organisation's operator token, one of its integrators, or a staff
    member's own token; and the person acting, if any (that member, or one a token names in
    `Erx-On-Behalf-Of`)."""

    name: str
    integrator_id: str | None = None
    scopes: set[str] = set()
    person: StaffMember | None = None
    personal: bool = False  # a staff member's own API token: `person` is that member

    @property
    def is_operator(self) -> bool:
        """The organisation itself (its operator token, or a member's own token), not an integrator."""
        return self.integrator_id is None

    @property
    def via(self) -> Via:
        return Via.INTEGRATOR if self.integrator_id else Via.STAFF_TOKEN if self.personal else Via.OPERATOR_TOKEN

    def may(self, scope: str | None) -> bool:
        """May this caller use an operation that needs `scope` (None: any authenticated caller)?"""
        return scope is None or self.is_operator or scope in self.scopes


def refusal(caller: Caller, action: Action | None, *, operator_only: bool = False,
            scope: str | None = None) -> str | None:
    """Why `caller` may not use an operation declared with `action`, `operator_only` and `scope`; None if
    it may. Pure: the whole decision for the REST API (docs/staff-and-audit.md).

    The token bounds what can be done (an integrator never administers the organisation; without a scope
    it never changes what the scope guards); the person named decides as their role allows (`may`); and
    issuing, revoking and dispensing need a person."""
    if operator_only and not caller.is_operator:
        return "only the organisation's operator may do this (its operator token, or an operator's own token)"
    if scope is not None and not caller.may(scope):
        return f"this token lacks the scope {scope!r}; the operator can grant it"
    if action is None:
        return None
    if caller.person is not None:
        if not may(caller.person.role, action):
            return f"{a_role(caller.person.role)} may not {ACTION_TEXT[action]} ({caller.person.username})"
        return None
    if needs_person(action):
        return (f"only a person may {ACTION_TEXT[action]}: use a staff member's own API token, or name the "
                f"staff member with the {ON_BEHALF_OF} header")
    return None


Authenticate = Callable[[str], Caller | None]
ActFor = Callable[[Caller, str], Caller]
CALLER = web.RequestKey("caller", Caller)
ON_BEHALF_OF = "Erx-On-Behalf-Of"


def api_middlewares(authenticate: Authenticate, public_paths: Callable[[], set[str]] = set,
                    act_for: ActFor | None = None) -> list:
    """JSON errors for everything, and a bearer token for every `/api/` path that is not public.
    `authenticate` maps the Authorization header to the caller (None: refused); `act_for` makes it act
    for the staff member an `Erx-On-Behalf-Of` header names (or raises ApiError)."""

    @web.middleware
    async def errors(request: web.Request, handler):
        try:
            return await handler(request)
        except ApiError as exc:
            return _answer(exc)
        except DomainError as exc:  # a service's refusal (erx_roles.errors), in HTTP's words
            return _answer(http_error(exc))
        except UnreadableRecord as exc:
            return web.json_response({"error": f"{exc}; it is set aside for the operator (./erx status)"},
                                     status=409)
        except AgentUnreachable as exc:  # every transient upstream fault is mapped here, in one place
            LOG.warning("%s %s: %s", request.method, request.path, exc.reason)
            return _answer(http_error(unavailable("the organisation's agent did not answer")))
        except AdminApiError as exc:  # the agent answered with an error no service turned into a verdict
            LOG.warning("%s %s: agent answered %s: %s", request.method, request.path, exc.status, exc.reason[:300])
            if exc.status >= 500:
                return _answer(http_error(unavailable("the organisation's agent failed to answer")))
            return web.json_response({"error": f"the organisation's agent refused: {exc.reason[:300]}"}, status=502)
        except (ChainUnavailable, TransactionTimeout) as exc:
            LOG.warning("%s %s: %s", request.method, request.path, exc)
            return _answer(http_error(unavailable("the chain did not answer")))
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
            named = request.headers.getall(ON_BEHALF_OF, [])
            if act_for is not None and named:
                if len(named) > 1:
                    raise ApiError(403, f"the {ON_BEHALF_OF} header is given more than once")
                caller = act_for(caller, named[0].strip())
            request[CALLER] = caller
        return await handler(request)

    return [errors, auth]


def _answer(exc: ApiError) -> web.Response:
    return web.json_response({"error": exc.reason, **exc.extra}, status=exc.status, headers=exc.headers)
