"""An organisation's operators' pages: its staff accounts (add, disable, enable, new password, new personal
API token; each secret shown once, on the answer to the form) and its audit log (read, export)."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from erx_core.audit import AuditAction, AuditLog
from erx_core.secrets import new_password
from erx_core.staff import Action, StaffCreate, StaffDirectory, StaffError, is_username
from erx_core.store import InvalidCursor
from erx_roles.pages.web import ACTOR, field_errors, flash, page_action, render, see_other, text_fields
from erx_roles.staff_api import ExportFormat, domain_error, stream_export

LISTED = 50


class StaffPages:
    def __init__(self, staff: StaffDirectory, log: AuditLog):
        self.staff, self.log = staff, log

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/staff", self.home),
            web.post("/staff", self.add),
            web.post("/staff/{username}/disable", self.disable),
            web.post("/staff/{username}/enable", self.enable),
            web.post("/staff/{username}/password", self.new_password),
            web.post("/staff/{username}/token", self.new_token),
            web.get("/audit", self.audit),
            web.get("/audit/export", self.export),
        ]

    def _page(self, read, after: str | None):
        try:
            return read(LISTED, after if after else None)
        except InvalidCursor:
            return read(LISTED, None)

    async def _home(self, request: web.Request, form: dict | None = None, errors: dict | None = None,
                    shown_once: dict | None = None, status: int = 200) -> web.Response:
        listed = self._page(self.staff.page, request.query.get("after"))
        return await render(request, "staff.html", {
            "staff": listed.items, "next": listed.next, "total": listed.total, "roles": self.staff.roles,
            "form": form or {}, "errors": errors or {}, "shown_once": shown_once}, status=status)

    @page_action(Action.MANAGE_STAFF)
    async def home(self, request: web.Request) -> web.Response:
        return await self._home(request)

    @page_action(Action.MANAGE_STAFF, audit=AuditAction.STAFF_ADDED)
    async def add(self, request: web.Request) -> web.Response:
        form = text_fields(await request.post())
        try:
            body = StaffCreate.model_validate(form)
        except ValidationError as exc:
            return await self._home(request, form, field_errors(exc), status=422)
        password = new_password()
        try:
            member = self.staff.add(body, password)
        except StaffError as exc:
            field = "role" if "role" in str(exc) else "username"
            return await self._home(request, form, {field: str(exc)}, status=409)
        return await self._home(request, shown_once={
            "username": member.username, "what": "password", "secret": password,
            "text": f"{member.display_name} ({member.role}) can sign in now with this password."}, status=201)

    def _username(self, request: web.Request) -> str:
        username = request.match_info["username"]
        if not is_username(username):
            raise domain_error(StaffError(f"no staff member {username[:40]}"))
        return username

    async def _change(self, request: web.Request, change, done: str) -> web.Response:
        username = self._username(request)
        try:
            change(username)
        except StaffError as exc:
            raise domain_error(exc) from None
        await flash(request, done.format(username=username))
        raise see_other("/staff")

    @page_action(Action.MANAGE_STAFF, audit=AuditAction.STAFF_DISABLED)
    async def disable(self, request: web.Request) -> web.Response:
        if self._username(request) == request[ACTOR].username:
            await flash(request, "You cannot disable your own account.", "error")
            return await self._home(request, status=409)
        return await self._change(request, lambda u: self.staff.set_disabled(u, True),
                                  "Disabled {username}: signed out, and their token no longer works.")

    @page_action(Action.MANAGE_STAFF, audit=AuditAction.STAFF_ENABLED)
    async def enable(self, request: web.Request) -> web.Response:
        return await self._change(request, lambda u: self.staff.set_disabled(u, False), "Enabled {username}.")

    @page_action(Action.MANAGE_STAFF, audit=AuditAction.STAFF_PASSWORD_SET)
    async def new_password(self, request: web.Request) -> web.Response:
        username, password = self._username(request), new_password()
        try:
            self.staff.set_password(username, password)
        except StaffError as exc:
            raise domain_error(exc) from None
        return await self._home(request, shown_once={
            "username": username, "what": "password", "secret": password,
            "text": f"The new password of {username}; their sessions have ended."})

    @page_action(Action.MANAGE_STAFF, audit=AuditAction.STAFF_TOKEN_ISSUED)
    async def new_token(self, request: web.Request) -> web.Response:
        username = self._username(request)
        try:
            _, token = self.staff.new_token(username)
        except StaffError as exc:
            raise domain_error(exc) from None
        return await self._home(request, shown_once={
            "username": username, "what": "API token", "secret": token,
            "text": f"The personal API token of {username} (Authorization: Bearer …); the previous one "
                    "no longer works."})

    @page_action(Action.AUDIT)
    async def audit(self, request: web.Request) -> web.Response:
        listed = self._page(self.log.page, request.query.get("after"))
        return await render(request, "audit.html", {"entries": listed.items, "next": listed.next,
                                                    "total": listed.total})

    @page_action(Action.AUDIT, audit=AuditAction.EXPORTED)
    async def export(self, request: web.Request) -> web.StreamResponse:
        fmt = ExportFormat.JSONL if request.query.get("format") == "jsonl" else ExportFormat.CSV
        return await stream_export(request, self.log, fmt)
