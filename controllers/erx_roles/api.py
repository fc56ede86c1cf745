"""A controller's REST API, declared once: each operation names its path, its pydantic request and
response models and the errors it can answer, and from that one declaration come both the aiohttp
route (body and query parsed and validated, result serialised through the declared model) and the
OpenAPI 3 document at `/api/openapi.json`. So the document cannot drift from the code.

    api = Api("pharmacy")

    @api.operation("POST", "/api/checks/{check_id}/dispense", response=DispenseCheck,
                   summary="Dispense: spend the token", errors=(404, 409, 503))
    async def dispense(request, check_id: str) -> DispenseCheck: ...

A handler receives the request, the path parameters by name, and `body=`/`query=` when the operation
declares models for them. It returns an instance of the response type (or None for 204).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.json_schema import GenerateJsonSchema

from erx_core import ids
from erx_core.audit import AuditAction
from erx_core.staff import USERNAME_RE, Action, StaffRole, is_username, may, needs_person
from erx_core.store import InvalidCursor, Table
from erx_roles.acting import AUDIT_LOG, audited, record, subject_of, who_called
from erx_roles.http import CALLER, ON_BEHALF_OF, ApiError, field_problems, parse_body, refusal

Handler = Callable[..., Awaitable[Any]]
OPENAPI_PATH = "/api/openapi.json"
_PATH_PARAM = re.compile(r"{(\w+)}")

STATUS_TEXT = {200: "OK", 201: "Created", 204: "No content", 400: "Bad request", 401: "No or wrong API token",
               403: "Not allowed for this token", 404: "Not found", 409: "Conflict with the current state",
               422: "Invalid request", 502: "An upstream system (agent or chain) refused",
               503: "An upstream system did not answer; retry later"}


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a reason a person can act on, and for 422 the fields at fault."""

    model_config = ConfigDict(extra="allow")

    error: str
    fields: list[FieldProblem] | None = None


class WaitQuery(BaseModel):
    """Long poll: answer as soon as the awaited state is reached, or after `wait` seconds."""

    wait: float = Field(default=0, ge=0, le=60, allow_inf_nan=False,
                        description="seconds to wait for the next state (long poll)")


T = TypeVar("T")
MAX_PAGE_SIZE = 200
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,100}$"


class PageQuery(BaseModel):
    """One page of a list, newest first: `?limit=` records after the cursor `?after=` (the previous
    page's `next`). Cursors, not offsets: a record that arrives while a client pages shows up before its
    first page, never shifting a later page (no record skipped or seen twice); an updated record keeps
    its place. A cursor is opaque and belongs to its list."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=50, ge=1, le=MAX_PAGE_SIZE, description="records per page")
    after: str | None = Field(default=None, pattern=CURSOR_PATTERN, max_length=100,
                              description="the `next` of the previous page; omit for the first page")


class Page(BaseModel, Generic[T]):
    """A page of a list. `next` is null on the last page."""

    items: list[T]
    next: str | None = Field(description="pass as `after` for the following page; null: no more records")
    total: int = Field(description="records in the whole list when this page was read")


def read_page(table: Table[Any], query: PageQuery) -> Page[Any]:
    """A page of a store table as `Page[<the table's model>]`, or 422 naming `after` for a cursor of
    another list. Endpoints that show records differently convert the items and keep `next` and `total`:

        page = read_page(self.checks, query)
        return Page[DispenseCheck](items=[public(c) for c in page.items], next=page.next, total=page.total)
    """
    try:
        found = table.page(query.limit, after=query.after)
    except InvalidCursor as exc:
        raise ApiError(422, "invalid query parameters", fields=[{"field": "after", "message": str(exc)}]) from None
    return Page[table.model](items=found.items, next=found.next, total=found.total)  # type: ignore[name-defined]


@dataclass
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    response: Any = None  # a pydantic-serialisable type; None means 204 No Content
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    public: bool = False  # no API token needed
    operator_only: bool = False  # the organisation's own tokens (operator's, a member's), never an integrator's
    scope: str | None = None  # an integrator needs this scope (erx_roles.integrators.Scope); the operator never
    action: Action | None = None  # what the person acting does (erx_core.staff.may); None: anyone authenticated
    audit: AuditAction | None = None  # recorded in the audit log as this (erx_roles.acting)
    produces: tuple[str, ...] = ()  # a raw answer (the handler returns a web.StreamResponse) of these types
    description: str = ""
    path_params: list[str] = field(default_factory=list)

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.strip("_")


class Api:
    """The operations of one controller's REST API."""

    def __init__(self, title: str, description: str = "", version: str = "1.0.0"):
        self.title, self.description, self.version = title, description, version
        self.operations: list[Operation] = []

    def operation(self, method: str, path: str, *, summary: str, tag: str = "", response: Any = None,
                  status: int = 200, body: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
                  errors: tuple[int, ...] = (), public: bool = False, operator_only: bool = False,
                  scope: str | None = None, action: Action | None = None, audit: AuditAction | None = None,
                  produces: tuple[str, ...] = (), description: str = "") -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.operations.append(Operation(
                method=method.upper(), path=path, handler=handler, summary=summary, tag=tag or self.title,
                response=response, status=204 if response is None and not produces else status, body=body,
                query=query, errors=errors, public=public, operator_only=operator_only, scope=scope, action=action,
                audit=audit, produces=produces, description=description or (handler.__doc__ or "").strip(),
                path_params=_PATH_PARAM.findall(path)))
            return handler
        return register

    def include(self, other: Api) -> None:
        self.operations.extend(other.operations)

    # -- serving ------------------------------------------------------------------------------------
    def routes(self, server_url: str | None = None) -> list[web.RouteDef]:
        routes = [web.route(op.method, op.path, self._endpoint(op)) for op in self.operations]

        document: dict[str, Any] = {}  # built on first request: by then every operation is declared

        async def openapi(_: web.Request) -> web.Response:
            if not document:
                document.update(self.openapi(server_url))
            return web.json_response(document)

        return [*routes, web.get(OPENAPI_PATH, openapi)]

    def public_paths(self) -> set[str]:
        return {OPENAPI_PATH} | {op.path for op in self.operations if op.public}

    @staticmethod
    def _endpoint(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        adapter = TypeAdapter(op.response) if op.response is not None else None

        async def endpoint(request: web.Request) -> web.StreamResponse:
            caller = request.get(CALLER)
            kwargs: dict[str, Any] = {name: path_parameter(name, request.match_info[name]) for name in op.path_params}
            if not op.public:
                if caller is None:
                    raise ApiError(401, "missing or wrong API token (Authorization: Bearer …)")
                if reason := refusal(caller, op.action, operator_only=op.operator_only, scope=op.scope):
                    if op.audit is not None:  # an attempt refused is on the record too
                        record(request.app.get(AUDIT_LOG), who_called(caller), op.audit,
                               subject_of(request.match_info), 403, reason)
                    raise ApiError(403, reason)
            if op.query is not None:
                kwargs["query"] = parse_query(request, op.query)
            if op.body is not None:
                kwargs["body"] = await parse_body(request, op.body)
            if op.audit is None:
                result = await op.handler(request, **kwargs)
            else:
                result = await audited(request.app.get(AUDIT_LOG), who_called(caller), op.audit,
                                       subject_of(request.match_info, kwargs.get("body")),
                                       lambda: op.handler(request, **kwargs), lambda _: op.status, subject_of)
            if isinstance(result, web.StreamResponse):
                return result
            if adapter is None:
                return web.Response(status=204)
            return web.json_response(adapter.dump_python(result, mode="json"), status=op.status)

        return endpoint

    # -- describing -----------------------------------------------------------------------------------
    def openapi(self, server_url: str | None = None) -> dict[str, Any]:
        keyed: list[tuple[Any, str, TypeAdapter]] = [(ErrorBody, "serialization", TypeAdapter(ErrorBody))]
        for op in self.operations:
            if op.response is not None:
                keyed.append(((op.operation_id, "out"), "serialization", TypeAdapter(op.response)))
            if op.body is not None:
                keyed.append(((op.operation_id, "in"), "validation", TypeAdapter(op.body)))
        by_key, defs = TypeAdapter.json_schemas(keyed, ref_template="#/components/schemas/{model}",
                                                schema_generator=_ClosedObjects)
        error_ref = by_key[(ErrorBody, "serialization")]

        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            parameters = [{"name": name, "in": "path", "required": True, "schema": _path_schema(name)}
                          for name in op.path_params]
            if op.query is not None:
                parameters += _query_parameters(op.query)
            if op.action is not None and not op.public:
                parameters.append(ON_BEHALF_OF_PARAMETER)
            responses: dict[str, Any] = {}
            if op.produces:
                responses[str(op.status)] = {"description": STATUS_TEXT.get(op.status, "OK"), "content": {
                    kind: {"schema": {"type": "string"}} for kind in op.produces}}
            elif op.response is None:
                responses["204"] = {"description": STATUS_TEXT[204]}
            else:
                responses[str(op.status)] = {"description": STATUS_TEXT.get(op.status, "OK"), "content": {
                    "application/json": {"schema": by_key[((op.operation_id, "out"), "serialization")]}}}
            codes = set(op.errors) | ({422} if op.body or op.query or op.path_params else set()) \
                | (set() if op.public else {401})
            if op.operator_only or op.scope or op.action is not None:
                codes.add(403)
            for code in sorted(codes):
                responses[str(code)] = {"description": STATUS_TEXT.get(code, "Error"),
                                        "content": {"application/json": {"schema": error_ref}}}
            entry: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag],
                                     "parameters": parameters, "responses": responses}
            if op.description or op.scope or op.action:
                entry["description"] = (op.description + (f"\n\nIntegrator tokens need the scope `{op.scope}`."
                                                          if op.scope else "") + _who_may(op)).strip()
            if op.body is not None:
                entry["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": by_key[((op.operation_id, "in"), "validation")]}}}
            if op.public:
                entry["security"] = []
            paths.setdefault(op.path, {})[op.method.lower()] = entry

        document: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version, "description": self.description},
            "paths": paths,
            "components": {"schemas": defs.get("$defs", {}),
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                          "description": "an integrator's API token, a staff "
                                                                         "member's own token (erxs_…) or the "
                                                                         "operator token"}}},
            "security": [{"bearer": []}],
        }
        if server_url:
            document["servers"] = [{"url": server_url}]
        return document


# Every path parameter is an id of a known kind (erx_core.ids): checked before any handler runs, so
# no request value reaches a store, a URL or the agent unchecked.
PATH_ID_KINDS = {"check_id": "record", "prescription_id": "record", "invitation_id": "record", "therapy_id": "record",
                 "integrator_id": "record", "subscription_id": "record", "cred_def_id": "cred_def"}
ON_BEHALF_OF_PARAMETER = {
    "name": ON_BEHALF_OF, "in": "header", "required": False,
    "description": "the username of the staff member this token acts for (their role must allow the "
                   "operation); issuing, revoking and dispensing need one. Not with a member's own token.",
    "schema": {"type": "string", "pattern": USERNAME_RE, "maxLength": 30}}


def path_parameter(name: str, value: str) -> str:
    if name == "username":
        if not is_username(value):
            raise ApiError(422, "invalid path parameter", fields=[{"field": name, "message": "not a username"}])
        return value
    kind = PATH_ID_KINDS.get(name, "token")
    if not ids.is_valid(kind, value):
        raise ApiError(422, "invalid path parameter", fields=[{"field": name, "message": f"not a valid {kind} id"}])
    return value


def _path_schema(name: str) -> dict[str, Any]:
    if name == "username":
        return {"type": "string", "pattern": USERNAME_RE, "maxLength": 30}
    kind = PATH_ID_KINDS.get(name, "token")
    return {"type": "string", "pattern": ids.PATTERNS[kind], "maxLength": ids.MAX_LENGTH[kind]}


def _who_may(op: Operation) -> str:
    if op.action is None:
        return ""
    roles = [role.value for role in StaffRole if may(role, op.action)]
    text = f"\n\nStaff who may: {', '.join(roles)}."
    if needs_person(op.action):
        text += f" A person must act: a member's own token, or `{ON_BEHALF_OF}`."
    return text



class _ClosedObjects(GenerateJsonSchema):
    """Bodies are parsed with extra="forbid" (erx_roles.http.parse_body) and answers carry only the
    declared fields: the document says so (`additionalProperties: false`), unless a model allows more."""

    def model_schema(self, schema: Any) -> dict[str, Any]:
        json_schema = super().model_schema(schema)
        if json_schema.get("type") == "object" and "additionalProperties" not in json_schema:
            json_schema["additionalProperties"] = False
        return json_schema


def parse_query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    """Query parameters are text, so converted as such ("50" is 50); but each at most once, and only
    those the model declares."""
    repeated = sorted({name for name in request.query if len(request.query.getall(name)) > 1})
    if repeated:
        raise ApiError(422, "invalid query parameters",
                       fields=[{"field": name, "message": "given more than once"} for name in repeated])
    try:
        return model.model_validate(dict(request.query), extra="forbid")
    except ValidationError as exc:
        raise ApiError(422, "invalid query parameters", fields=field_problems(exc)) from None


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [{"name": name, "in": "query", "required": name in required,
             "description": prop.get("description", ""), "schema": {k: v for k, v in prop.items()
                                                                   if k not in ("description", "title")}}
            for name, prop in schema.get("properties", {}).items()]
