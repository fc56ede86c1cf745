"""Connecting a wallet to an organisation's agent: an out-of-band invitation (shown as a QR code or
link), then awaiting the DID Exchange that completes it. Shared by the doctor and the pharmacy."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from erx_core.acapy_admin import ACTIVE_CONNECTION, AdminApiError, ConnectionRecord
from erx_core.events import EventTimeout
from erx_core.staff import Action
from erx_core.store import Table
from erx_roles.context import RoleContext
from erx_roles.api import Api, WaitQuery
from erx_roles.errors import Conflict, NotFound

ACTIVE = ACTIVE_CONNECTION


class InvitationOut(BaseModel):
    invitation_id: str
    invitation_url: str = Field(description="the whole invitation in a URL: too long for a QR code, use short_url")
    short_url: str | None = None
    qr_svg_url: str | None = None
    qr_png_url: str | None = None


class ConnectionOut(BaseModel):
    connection_id: str
    state: str


def _invitations(ctx: RoleContext) -> Table[InvitationOut]:
    """Invitations this organisation made: a long poll on an unknown one answers 404 at once."""
    return ctx.store.table("invitation", InvitationOut)


async def create_invitation(ctx: RoleContext, alias: str) -> InvitationOut:
    inv = await ctx.admin.create_invitation(alias=alias)
    link = ctx.links.create(inv.invi_msg_id, inv.invitation_url)
    created = InvitationOut(invitation_id=inv.invi_msg_id, invitation_url=inv.invitation_url,
                            **ctx.links.qr_links(link).model_dump())
    _invitations(ctx).put(created.invitation_id, created)
    return created


async def connection_for(ctx: RoleContext, invitation_id: str, wait_s: float) -> ConnectionOut | None:
    """The connection made from an invitation, once active; waits up to `wait_s` for it."""
    waiter = ctx.bus.expect("connections", lambda p: p.get("invitation_msg_id") == invitation_id
                            and p.get("state") in ACTIVE, include_recent=True)
    active = [c for c in await ctx.admin.connections(invitation_msg_id=invitation_id) if c.active]
    if not active and wait_s:
        try:
            active = [ConnectionRecord.model_validate(await waiter.wait(wait_s))]
        except EventTimeout:
            return None
    return ConnectionOut(connection_id=active[0].connection_id, state=active[0].state) if active else None


async def require_active_connection(ctx: RoleContext, connection_id: str) -> None:
    """NotFound for a connection the agent does not know, Conflict for one not (yet or any more) active."""
    try:
        conn = await ctx.admin.connection(connection_id)
    except AdminApiError as exc:
        if exc.status in (404, 400, 422):
            raise NotFound(f"no connection {connection_id}") from None
        raise
    if not conn.active:
        raise Conflict(f"connection {connection_id} is {conn.state}, not active")


def connection_api(ctx: RoleContext, alias: str) -> Api:
    api = Api("connections")
    invitations = _invitations(ctx)

    @api.operation("POST", "/api/invitations", summary=f"An invitation for a {alias}'s wallet (QR code or link)",
                   tag="connections", response=InvitationOut, status=201, errors=(502,), action=Action.CONNECT)
    async def create_connection_invitation(_: web.Request) -> InvitationOut:
        return await create_invitation(ctx, alias)

    @api.operation("GET", "/api/invitations/{invitation_id}/connection", tag="connections", query=WaitQuery,
                   summary="The wallet's connection through an invitation (long poll with ?wait=seconds)",
                   response=ConnectionOut, errors=(404,), action=Action.CONNECT)
    async def invitation_connection(_: web.Request, invitation_id: str, query: WaitQuery) -> ConnectionOut:
        known = invitations.get(invitation_id) is not None
        found = await connection_for(ctx, invitation_id, query.wait if known else 0)
        if found is None:
            raise NotFound("no wallet has connected with this invitation yet" if known
                           else f"invitation {invitation_id} not found")
        return found

    return api
