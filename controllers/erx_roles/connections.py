"""Connecting a wallet to an organisation's agent: an out-of-band invitation (shown as a QR code or
link), then awaiting the DID Exchange that completes it. Shared by the doctor and the pharmacy."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from erx_core.events import EventTimeout
from erx_roles.context import RoleContext
from erx_roles.http import ApiError, json_response, wait_param

ACTIVE = ("active", "completed")


class InvitationOut(BaseModel):
    invitation_id: str
    invitation_url: str


class ConnectionOut(BaseModel):
    connection_id: str
    state: str


async def create_invitation(ctx: RoleContext, alias: str) -> InvitationOut:
    inv = await ctx.admin.create_invitation(alias=alias)
    return InvitationOut(invitation_id=inv.invi_msg_id, invitation_url=inv.invitation_url)


async def connection_for(ctx: RoleContext, invitation_id: str, wait_s: float) -> ConnectionOut | None:
    """The connection made from an invitation, once active; waits up to `wait_s` for it."""
    waiter = ctx.bus.expect("connections", lambda p: p.get("invitation_msg_id") == invitation_id
                            and p.get("state") in ACTIVE, include_recent=True)
    found = await ctx.admin.get("/connections", invitation_msg_id=invitation_id)
    active = [c for c in found.get("results", []) if c.get("state") in ACTIVE]
    if not active and wait_s:
        try:
            active = [await waiter.wait(wait_s)]
        except EventTimeout:
            return None
    return ConnectionOut(connection_id=active[0]["connection_id"], state=active[0]["state"]) if active else None


def connection_routes(ctx: RoleContext, alias: str) -> list[web.RouteDef]:
    async def invitations(_: web.Request) -> web.Response:
        return json_response(await create_invitation(ctx, alias), status=201)

    async def connection(request: web.Request) -> web.Response:
        """Long poll (?wait=seconds) for the wallet's connection through an invitation."""
        found = await connection_for(ctx, request.match_info["invitation_id"], wait_param(request))
        if found is None:
            raise ApiError(404, "no wallet has connected with this invitation yet")
        return json_response(found)

    return [web.post("/api/invitations", invitations),
            web.get("/api/invitations/{invitation_id}/connection", connection)]
