"""The wallet stand-in's page (for demos and tests; real patients use a mobile wallet): open an
invitation link, accept or decline credential offers, approve or decline proof requests seeing exactly
what would be disclosed, list the prescriptions held."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from erx_core import ids
from erx_roles.errors import DomainError
from erx_roles.invitations import qr_svg
from erx_roles.http import http_error
from erx_roles.pages.web import LiveHub, field_errors, flash, fragment, render, see_other, text_fields
from erx_roles.patient.models import OpenInvitation
from erx_roles.patient.service import PatientService, readable, validity


class PatientPages:
    def __init__(self, service: PatientService, live: LiveHub):
        self.service, self.live = service, live

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.home),
            web.get("/open", self.open_form),
            web.post("/open", self.open),
            web.post("/offers/{cred_ex_id}/accept", self.accept),
            web.post("/offers/{cred_ex_id}/decline", self.decline_offer),
            web.post("/requests/{pres_ex_id}/approve", self.approve),
            web.post("/requests/{pres_ex_id}/decline", self.decline_request),
            web.get("/fragments/offers", self.offers_fragment),
            web.get("/fragments/requests", self.requests_fragment),
            web.get("/fragments/credentials", self.credentials_fragment),
            web.get("/fragments/receipts", self.receipts_fragment),
            web.get("/held/{credential_id}/pickup", self.pickup),
            web.get("/held/{credential_id}/pickup.svg", self.pickup_qr),
        ]

    # -- what the page shows ---------------------------------------------------------------------------
    async def _credentials(self) -> list[dict[str, Any]]:
        held = await self.service.credentials()
        today = dt.date.today()
        return sorted(({"credential_id": c.credential_id, "validity": validity(c.attributes, today),
                        "attributes": {k: readable(k, v) for k, v in c.attributes.items()}} for c in held),
                      key=lambda c: (c["attributes"].get("issue_date", ""), c["attributes"].get("therapy_id", ""),
                                     -int(c["attributes"].get("therapy_part") or 1)), reverse=True)

    async def _context(self) -> dict[str, Any]:
        return {"offers": await self.service.offers(), "requests": await self.service.requests(),
                "credentials": await self._credentials(), "receipts": await self.service.held_receipts(),
                "auto_respond": self.service.auto_respond}

    async def home(self, request: web.Request, form: dict | None = None, errors: dict | None = None,
                   status: int = 200) -> web.Response:
        return await render(request, "patient.html", {**await self._context(), "form": form or {},
                                                      "errors": errors or {}}, status=status)

    async def open_form(self, request: web.Request) -> web.Response:
        """A link opened from elsewhere (`/open?url=…`) is shown for the user to confirm, never opened on GET."""
        return await self.home(request, {"invitation_url": request.query.get("url", "")})

    async def offers_fragment(self, request: web.Request) -> web.Response:
        return await fragment(request, "patient/_offers.html", {"offers": await self.service.offers()})

    async def requests_fragment(self, request: web.Request) -> web.Response:
        return await fragment(request, "patient/_requests.html", {"requests": await self.service.requests()})

    async def credentials_fragment(self, request: web.Request) -> web.Response:
        return await fragment(request, "patient/_credentials.html", {"credentials": await self._credentials()})

    async def receipts_fragment(self, request: web.Request) -> web.Response:
        return await fragment(request, "patient/_receipts.html", {"receipts": await self.service.held_receipts()})

    async def _held(self, credential_id: str) -> dict[str, Any]:
        if not ids.is_valid("record", credential_id):
            raise web.HTTPNotFound(text="no such prescription in this wallet")
        held = await self.service.credentials()
        match = next((c for c in held if c.credential_id == credential_id), None)
        if match is None:
            raise web.HTTPNotFound(text="no such prescription in this wallet")
        return {"credential_id": credential_id, "attributes": match.attributes}

    async def pickup(self, request: web.Request) -> web.Response:
        """The representative path: the practice-signed pickup code of one prescription, as a QR code."""
        held = await self._held(request.match_info["credential_id"])
        code = await self.service.pickup_code(held["credential_id"])
        return await render(request, "patient_pickup.html", {"c": held, "code": code})

    async def pickup_qr(self, request: web.Request) -> web.Response:
        held = await self._held(request.match_info["credential_id"])
        code = await self.service.pickup_code(held["credential_id"])
        return web.Response(body=qr_svg(code), content_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    # -- what the wallet's holder does ---------------------------------------------------------------------
    async def open(self, request: web.Request) -> web.Response:
        form = text_fields(await request.post())
        try:
            body = OpenInvitation.model_validate(form)
            opened = await self.service.open_invitation(body)
        except ValidationError as exc:
            return await self.home(request, form, field_errors(exc), status=422)
        except DomainError as exc:  # not an invitation, unreachable, or the agent refused it
            return await self.home(request, form, {"invitation_url": exc.reason}, status=http_error(exc).status)
        self.live.notify("opened")
        who = opened.get("label") or "the inviter"
        await flash(request, f"Connected to {who}." if opened.get("connection_id") else f"Opened the invitation "
                    f"from {who}; anything it asks for appears below.")
        raise see_other("/")

    async def accept(self, request: web.Request) -> web.Response:
        await self._act(request, self.service.accept_offer(request.match_info["cred_ex_id"]),
                        "Accepted; the prescription is stored when it arrives.")
        raise see_other("/")

    async def decline_offer(self, request: web.Request) -> web.Response:
        await self._act(request, self.service.decline_offer(request.match_info["cred_ex_id"]), "Offer declined.")
        raise see_other("/")

    async def approve(self, request: web.Request) -> web.Response:
        pres_ex_id = request.match_info["pres_ex_id"]
        credential_id = str((await request.post()).get("credential_id", "")) or None

        async def approve() -> dict:
            await self.service.request_view(pres_ex_id)  # 404 / 409 unless it still waits for an answer
            return await self.service.approve(pres_ex_id, credential_id)

        result = await self._act(request, approve())
        if result and result.get("state") == "declined":
            await flash(request, f"Not shared: {result.get('reason') or 'no matching prescription'}", "error")
        elif result:
            await flash(request, "Shared: the verifier now checks the prescription.")
        raise see_other("/")

    async def decline_request(self, request: web.Request) -> web.Response:
        await self._act(request, self.service.decline(request.match_info["pres_ex_id"]), "Request declined; "
                        "nothing was shared.")
        raise see_other("/")

    async def _act(self, request: web.Request, action, done: str | None = None) -> dict | None:
        try:
            result = await action
        except DomainError as exc:
            await flash(request, exc.reason, "error")
            return None
        self.live.notify("wallet")
        if done:
            await flash(request, done)
        return result
