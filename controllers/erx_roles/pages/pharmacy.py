"""The pharmacy's page: ask for a prescription by QR code (or over a connection to a customer's wallet),
see it checked, dispense it (the token is spent then) or see the one reason it was refused; the
dispense history and the trusted prescribers."""

from __future__ import annotations

import asyncio
from itertools import islice
from typing import Any

from aiohttp import web
from aiohttp_session import get_session
from pydantic import ValidationError

from erx_core.audit import AuditAction
from erx_core.documents import UploadRejected, codes_in_upload
from erx_core.staff import Action
from erx_roles.connections import create_invitation
from erx_roles.errors import DomainError, InvalidRequest, not_found
from erx_roles.invitations import ShortLinks
from erx_roles.pages.web import LiveHub, field_errors, flash, fragment, page_action, render, see_other, text_fields
from erx_roles.pharmacy.models import CheckState, TrustedPrescriber
from erx_roles.pharmacy.service import PharmacyService
from erx_schemas.paper import PREFIX as PICKUP_PREFIX
from erx_roles.dispensing import Substitution, SubstitutionKind
from erx_schemas.prescription import CODE_SYSTEMS, REFUSAL_TEXT

LISTED = 50


class PharmacyPages:
    def __init__(self, service: PharmacyService, links: ShortLinks, live: LiveHub):
        self.service, self.ctx, self.links, self.live = service, service.ctx, links, live

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.home),
            web.post("/checks", self.new_check),
            web.post("/pickup-codes", self.pickup_code),
            web.get("/checks/{check_id}", self.check_page),
            web.post("/checks/{check_id}/dispense", self.dispense),
            web.get("/checks/{check_id}/receipt.pdf", self.receipt_pdf),
            web.post("/invitations", self.new_invitation),
            web.get("/trusted", self.trusted_page),
            web.post("/trusted", self.add_trusted),
            web.post("/trusted/remove", self.remove_trusted),
            web.get("/fragments/check/{check_id}", self.check_fragment),
            web.get("/fragments/customers", self.customers_fragment),
            web.get("/fragments/history", self.history_fragment),
        ]

    # -- what the page shows ---------------------------------------------------------------------------
    def _check(self, check_id: str) -> dict[str, Any]:
        check = self.service.checks.get(check_id)
        if check is None:
            raise not_found("check")
        view: dict[str, Any] = {"c": check, "link": None, "refusal_text": None, "trusted": None,
                                "code_systems": sorted(CODE_SYSTEMS)}
        if check.refusal is not None:
            view["refusal_text"] = REFUSAL_TEXT[check.refusal.reason]
        if check.cred_def_id:
            view["trusted"] = self.service.trusted.get(check.cred_def_id)
        if check.invitation_url and (link := self.links.for_ref(check.check_id)):
            view["link"] = {"short_url": self.links.url(link), "qr": self.links.qr_path(link),
                          "long_url": check.invitation_url, "invitation_id": check.check_id}
        return view

    async def _customers(self, request: web.Request) -> dict[str, Any]:
        """Wallets connected to this pharmacy, and the invitation this session showed last."""
        customers = sorted(({"connection_id": c.connection_id, "label": c.their_label or "unnamed wallet",
                             "since": c.created_at} for c in await self.ctx.admin.connections(state="active")),
                           key=lambda c: c["since"] or "", reverse=True)
        invitation = None
        invitation_id = (await get_session(request)).get("invitation_id")
        if invitation_id and (link := self.links.for_ref(invitation_id)):
            invitation = {"short_url": self.links.url(link), "qr": self.links.qr_path(link),
                          "long_url": link.invitation_url, "invitation_id": invitation_id}
        return {"customers": customers, "invitation": invitation}

    def _history(self) -> list:
        return list(islice(self.service.checks.all(), LISTED))

    async def home(self, request: web.Request, trusted_form: dict | None = None,
                   errors: dict | None = None, status: int = 200) -> web.Response:
        return await render(request, "pharmacy.html", {
            **await self._customers(request), "history": self._history(), "trusted": list(self.service.trusted.all()),
            "trusted_form": trusted_form or {}, "errors": errors or {}}, status=status)

    @page_action(Action.MANAGE_TRUST)
    async def trusted_page(self, request: web.Request, trusted_form: dict | None = None,
                           errors: dict | None = None, status: int = 200) -> web.Response:
        """The operators' view of the trust list (pharmacists see it on the pharmacy's page, read-only)."""
        return await render(request, "pharmacy_trusted.html", {
            "trusted": list(self.service.trusted.all()), "trusted_form": trusted_form or {}, "errors": errors or {}},
            status=status)

    async def check_page(self, request: web.Request) -> web.Response:
        return await render(request, "pharmacy_check.html", self._check(request.match_info["check_id"]))

    async def check_fragment(self, request: web.Request) -> web.Response:
        return await fragment(request, "pharmacy/_check.html", self._check(request.match_info["check_id"]))

    async def customers_fragment(self, request: web.Request) -> web.Response:
        return await fragment(request, "pharmacy/_customers.html", await self._customers(request))

    async def history_fragment(self, request: web.Request) -> web.Response:
        return await fragment(request, "pharmacy/_history.html", {"history": self._history()})

    # -- what the pharmacist does ------------------------------------------------------------------------
    @page_action(Action.CHECK, audit=AuditAction.CHECKED)
    async def new_check(self, request: web.Request) -> web.Response:
        """A proof request: connectionless behind a QR code, or sent to a connected customer's wallet."""
        connection_id = str((await request.post()).get("connection_id") or "") or None
        check = await self.service.request(connection_id)
        if check.invitation_url:
            self.links.create(check.check_id, check.invitation_url)
        self.live.notify("check")
        raise see_other(f"/checks/{check.check_id}")

    @page_action(Action.CHECK, audit=AuditAction.CHECKED)
    async def pickup_code(self, request: web.Request) -> web.Response:
        """A paper prescription or a representative's pickup code: pasted (or typed by a scanner), or a
        photo, scan or PDF of it uploaded."""
        form = await request.post()
        upload, text = form.get("scan"), str(form.get("code") or "").strip()
        try:
            if isinstance(upload, web.FileField) and (data := upload.file.read()):
                codes = await asyncio.to_thread(codes_in_upload, data, upload.content_type)
                text = next((c for c in codes if c.startswith(PICKUP_PREFIX)), "")
                if not text:
                    raise InvalidRequest("no pickup code (ERX1:…) found in the uploaded file")
            if not text:
                raise InvalidRequest("paste the pickup code or upload a photo, scan or PDF of the paper")
            check = await self.service.check_pickup_code(text)
        except UploadRejected as exc:
            await flash(request, f"Not checked: {exc}", "error")
            raise see_other("/#paper") from None
        except DomainError as exc:
            await flash(request, f"Not checked: {exc.reason}", "error")
            raise see_other("/#paper") from None
        self.live.notify("check")
        raise see_other(f"/checks/{check.check_id}")

    @page_action(Action.DISPENSE, audit=AuditAction.DISPENSED)
    async def dispense(self, request: web.Request) -> web.Response:
        check_id = request.match_info["check_id"]
        try:
            substitution = self._substitution(check_id, text_fields(await request.post()))
        except ValidationError as exc:
            problems = "; ".join(f"{name.replace('_', ' ')}: {text}" for name, text in field_errors(exc).items())
            await flash(request, f"Not dispensed: {problems}", "error")
            raise see_other(f"/checks/{check_id}") from None
        try:
            check = await self.service.dispense(check_id, substitution)
        except DomainError as exc:  # already final, a substitution the rules refuse, or the chain did not confirm
            await flash(request, f"Not dispensed: {exc.reason}", "error")
        else:
            self.live.notify("check")
            if check.state == CheckState.DISPENSED:
                await flash(request, f"Dispensed. {check.remaining_redemptions} redemption(s) left.")
        raise see_other(f"/checks/{check_id}")

    def _substitution(self, check_id: str, form: dict[str, str]) -> Substitution | None:
        """The dispense form's choice: as prescribed (None), a generic (name, code, code system; the prescribed
        strength and form) or another pack size (quantity), each with a reason. ValidationError if unreadable."""
        kind = form.get("substitution", "")
        if kind not in (SubstitutionKind.GENERIC, SubstitutionKind.PACK_SIZE):
            return None
        check = self.service.checks.get(check_id)
        prescribed = ((check.prescription if check is not None else None) or {}).get("medication") or {}
        fields: dict[str, Any] = {"kind": kind, "reason": form.get("reason", "")}
        if kind == SubstitutionKind.GENERIC:
            fields["medication"] = {"name": form.get("generic_name", ""), "code": form.get("generic_code", ""),
                                    "code_system": form.get("generic_code_system", "ATC"),
                                    "strength": prescribed.get("strength", ""), "form": prescribed.get("form", "")}
        else:
            quantity = form.get("quantity", "")
            fields["quantity"] = int(quantity) if quantity.isdecimal() and len(quantity) < 6 else quantity
        return Substitution.model_validate(fields)

    async def receipt_pdf(self, request: web.Request) -> web.Response:
        """The printable receipt of a dispensed check (for the paper path, and any patient who asks)."""
        check_id = request.match_info["check_id"]
        pdf = await self.service.receipt_pdf(check_id)
        return web.Response(body=pdf, content_type="application/pdf", headers={
            "Content-Disposition": f'inline; filename="receipt-{check_id}.pdf"', "Cache-Control": "no-store"})

    @page_action(Action.CONNECT)
    async def new_invitation(self, request: web.Request) -> web.Response:
        invitation = await create_invitation(self.ctx, alias="customer")
        self.links.create(invitation.invitation_id, invitation.invitation_url)
        (await get_session(request))["invitation_id"] = invitation.invitation_id
        raise see_other("/#customers")

    @page_action(Action.MANAGE_TRUST, audit=AuditAction.TRUST_SET)
    async def add_trusted(self, request: web.Request) -> web.Response:
        form = text_fields(await request.post())
        try:
            trusted = TrustedPrescriber.model_validate(form)
        except ValidationError as exc:
            errors = field_errors(exc)
            if "cred_def_id" in errors and form.get("cred_def_id"):
                errors["cred_def_id"] = "not a credential definition id (DID:3:CL:schema seq no:tag)"
            return await self.trusted_page(request, form, errors, status=422)
        self.service.trust(trusted)
        await flash(request, f"Trusted: {trusted.label or trusted.cred_def_id}")
        raise see_other("/trusted#trusted")

    @page_action(Action.MANAGE_TRUST, audit=AuditAction.TRUST_REMOVED)
    async def remove_trusted(self, request: web.Request) -> web.Response:
        cred_def_id = str((await request.post()).get("cred_def_id", ""))
        self.service.distrust(cred_def_id)
        await flash(request, f"No longer trusted: {cred_def_id}")
        raise see_other("/trusted#trusted")
