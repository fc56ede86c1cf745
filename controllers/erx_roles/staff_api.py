"""People through the REST API: who a token acts for, the staff accounts, and the audit log.

A call is made with one of three tokens (docs/staff-and-audit.md):
- a staff member's own token (`erxs_…`, `erx staff token`): that member acts;
- an integrator's token: the integrator, acting for the member named in `Erx-On-Behalf-Of` if any
  (who must exist, be enabled and be allowed the operation; the integrator's scopes still apply);
- the organisation's operator token: administration, and, with `Erx-On-Behalf-Of`, a member's work.
What the person acting may do is `erx_core.staff.may`; the whole decision is `erx_roles.http.refusal`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Callable, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from erx_core.audit import AuditAction, AuditEntry, AuditLog
from erx_core.secrets import new_password
from erx_core.store import InvalidCursor, TablePage
from erx_core.staff import (Action, RoleNotHere, StaffCreate, StaffDirectory, StaffError, StaffExists,
                            StaffMember, UnknownStaff)
from erx_roles.api import Api, Page, PageQuery
from erx_roles.errors import Conflict, DomainError, InvalidRequest, NotFound
from erx_roles.http import ON_BEHALF_OF, ApiError, Caller
from erx_roles.integrators import Integrators, caller_of


M = TypeVar("M", bound=BaseModel)


class Access:
    """Authenticates the REST API's callers: the operator's and integrators' tokens (`Integrators`) and
    staff members' own tokens, and resolves `Erx-On-Behalf-Of`."""

    def __init__(self, integrators: Integrators, staff: StaffDirectory):
        self.integrators, self.staff = integrators, staff

    def authenticate(self, authorization: str) -> Caller | None:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token and (member := self.staff.by_token(token)) is not None:
            if member.disabled:
                raise ApiError(401, f"the staff account {member.username} is disabled")
            return Caller(name=member.username, person=member.public(), personal=True)
        return self.integrators.authenticate(authorization)

    def act_for(self, caller: Caller, username: str) -> Caller:
        if caller.personal:
            if caller.person is None or username != caller.person.username:
                raise ApiError(403, f"a staff member's own token acts for that member only: drop {ON_BEHALF_OF}")
            return caller
        member = self.staff.active(username)
        if member is None:  # the header's value is not echoed
            raise ApiError(403, f"{ON_BEHALF_OF} names no enabled staff member of this organisation")
        return caller.model_copy(update={"person": member})


class StaffCreated(StaffMember):
    password: str = Field(description="the sign-in password; shown only now, hand it to the member")


class StaffPassword(BaseModel):
    username: str
    password: str = Field(description="the new sign-in password; shown only now. Sessions signed in before end.")


class StaffToken(BaseModel):
    username: str
    token: str = Field(description="the member's own API token (erxs_…); shown only now, replaces the previous one")
    token_hint: str


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


class ExportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: ExportFormat = Field(default=ExportFormat.CSV, description="csv (a header line first) or jsonl")


EXPORT_TYPES = {ExportFormat.CSV: "text/csv", ExportFormat.JSONL: "application/x-ndjson"}


def page_of(read: Callable[[int, str | None], TablePage[M]], query: PageQuery, model: type[M]) -> Page[M]:
    try:
        found = read(query.limit, query.after)
    except InvalidCursor as exc:
        raise ApiError(422, "invalid query parameters", fields=[{"field": "after", "message": str(exc)}]) from None
    return Page[model](items=found.items, next=found.next, total=found.total)  # type: ignore[valid-type]


def domain_error(exc: StaffError) -> DomainError:
    """A staff directory's refusal in the domain's words (mapped to HTTP in erx_roles.http)."""
    kind = {UnknownStaff: NotFound, StaffExists: Conflict, RoleNotHere: InvalidRequest}.get(type(exc), Conflict)
    return kind(str(exc))


class StaffApi:
    def __init__(self, staff: StaffDirectory, log: AuditLog):
        self.staff, self.log = staff, log

    def _do(self, change, *args):
        try:
            return change(*args)
        except StaffError as exc:
            raise domain_error(exc) from None

    def api(self) -> Api:
        api = Api("staff")
        tag, audit = "staff", "audit"
        manage = {"operator_only": True, "action": Action.MANAGE_STAFF}

        @api.operation("GET", "/api/staff", summary="Staff accounts, newest first", tag=tag, query=PageQuery,
                       response=Page[StaffMember], **manage)
        async def list_staff(_: web.Request, query: PageQuery) -> Page[StaffMember]:
            return page_of(self.staff.page, query, StaffMember)

        @api.operation("POST", "/api/staff", summary="Add a staff member; the answer holds their password, once",
                       tag=tag, body=StaffCreate, response=StaffCreated, status=201, errors=(409,),
                       audit=AuditAction.STAFF_ADDED, **manage)
        async def add_staff(_: web.Request, body: StaffCreate) -> StaffCreated:
            """Roles: a practice has prescribers (who need a `professional_id`), assistants and operators; a
            pharmacy pharmacists, assistants and operators. The password is random; the controller keeps
            only its argon2id hash."""
            password = new_password()
            member = self._do(self.staff.add, body, password)
            return StaffCreated(**member.model_dump(), password=password)

        @api.operation("GET", "/api/staff/{username}", summary="One staff account", tag=tag, response=StaffMember,
                       errors=(404,), **manage)
        async def get_staff(_: web.Request, username: str) -> StaffMember:
            found = self.staff.member(username)
            if found is None:
                raise NotFound(f"no staff member {username}")
            return found

        @api.operation("POST", "/api/staff/{username}/disable", tag=tag, response=StaffMember, errors=(404,),
                       summary="Disable an account: its sessions and its own token stop working at once",
                       audit=AuditAction.STAFF_DISABLED, **manage)
        async def disable_staff(request: web.Request, username: str) -> StaffMember:
            person = caller_of(request).person
            if person is not None and person.username == username:
                raise Conflict("you cannot disable your own account; another operator can")
            return self._do(self.staff.set_disabled, username, True)

        @api.operation("POST", "/api/staff/{username}/enable", tag=tag, response=StaffMember, errors=(404,),
                       summary="Enable a disabled account again", audit=AuditAction.STAFF_ENABLED, **manage)
        async def enable_staff(_: web.Request, username: str) -> StaffMember:
            return self._do(self.staff.set_disabled, username, False)

        @api.operation("POST", "/api/staff/{username}/password", tag=tag, response=StaffPassword, errors=(404,),
                       summary="Give an account a new random password (shown once); its sessions end",
                       audit=AuditAction.STAFF_PASSWORD_SET, **manage)
        async def reset_staff_password(_: web.Request, username: str) -> StaffPassword:
            password = new_password()
            self._do(self.staff.set_password, username, password)
            return StaffPassword(username=username, password=password)

        @api.operation("POST", "/api/staff/{username}/token", tag=tag, response=StaffToken, errors=(404,),
                       summary="A new personal API token for the member (shown once; the previous one stops)",
                       audit=AuditAction.STAFF_TOKEN_ISSUED, **manage)
        async def issue_staff_token(_: web.Request, username: str) -> StaffToken:
            member, token = self._do(self.staff.new_token, username)
            return StaffToken(username=username, token=token, token_hint=member.token_hint or "")

        @api.operation("DELETE", "/api/staff/{username}/token", tag=tag, errors=(404,),
                       summary="Revoke the member's personal API token", audit=AuditAction.STAFF_TOKEN_REVOKED,
                       **manage)
        async def revoke_staff_token(_: web.Request, username: str) -> None:
            self._do(self.staff.drop_token, username)

        @api.operation("GET", "/api/audit", summary="The audit log, newest first: who did what, when, how it ended",
                       tag=audit, query=PageQuery, response=Page[AuditEntry], operator_only=True,
                       action=Action.AUDIT)
        async def list_audit(_: web.Request, query: PageQuery) -> Page[AuditEntry]:
            return page_of(self.log.page, query, AuditEntry)

        @api.operation("GET", "/api/audit/export", summary="The whole audit log as CSV or JSON Lines, newest first",
                       tag=audit, query=ExportQuery, operator_only=True, action=Action.AUDIT,
                       produces=tuple(EXPORT_TYPES.values()), audit=AuditAction.EXPORTED)
        async def export_audit(request: web.Request, query: ExportQuery) -> web.StreamResponse:
            return await stream_export(request, self.log, query.format)

        return api


async def stream_export(request: web.Request, log: AuditLog, fmt: ExportFormat) -> web.StreamResponse:
    """The log as a download, written line by line (it is never held whole)."""
    response = web.StreamResponse(headers={
        "Content-Type": f"{EXPORT_TYPES[fmt]}; charset=utf-8", "Cache-Control": "no-store",
        "Content-Disposition": f'attachment; filename="audit.{fmt.value}"'})
    await response.prepare(request)
    for line in log.export(fmt.value):
        await response.write(line.encode())
    await response.write_eof()
    return response
