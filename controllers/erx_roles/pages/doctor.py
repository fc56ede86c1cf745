"""The practice's page: connect a patient's wallet by QR code, write a prescription, follow its status
(offered / issued / redeemed n of m / revoked / expired), revoke it."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from itertools import islice
from typing import Any

from aiohttp import web
from aiohttp_session import get_session
from pydantic import ValidationError

from erx_core.audit import AuditAction
from erx_core.staff import Action
from erx_roles.connections import create_invitation
from erx_roles.doctor.models import IssueRequest, PaperRequest, PrescriptionState
from erx_roles.doctor.service import DoctorService
from erx_roles.errors import DomainError, not_found
from erx_roles.http import http_error
from erx_roles.invitations import ShortLinks
from erx_roles.pages.web import LiveHub, acting_prescriber, flash, fragment, page_action, render, see_other, text_fields
from erx_schemas.prescription import (CODE_SYSTEMS, DEFAULT_VALIDITY_DAYS, PrescribingRules, PrescriptionOrder,
                                      TherapyPlan, input_context, therapy_orders)

LISTED = 50
PRINTOUT_KEPT_S = 10 * 60  # a paper prescription's PDF waits this long for its download (it holds the key)
# form field -> where it goes in the API's IssueRequest
ORDER_FIELDS: dict[str, tuple[str, ...]] = {
    "connection_id": ("connection_id",),
    "patient_name": ("order", "patient_name"),
    "patient_birth_date": ("order", "patient_birth_date"),
    "medication_name": ("order", "medication", "name"),
    "medication_code": ("order", "medication", "code"),
    "medication_code_system": ("order", "medication", "code_system"),
    "medication_strength": ("order", "medication", "strength"),
    "medication_form": ("order", "medication", "form"),
    "dosage_instructions": ("order", "dosage_instructions"),
    "quantity": ("order", "quantity"),
    "redemptions": ("order", "redemptions"),
    "valid_from": ("order", "valid_from"),
    "valid_until": ("order", "valid_until"),
}
FIELD_OF = {path: name for name, path in ORDER_FIELDS.items()}


def issue_request_from_form(form, rules: PrescribingRules | None = None
                            ) -> tuple[IssueRequest | None, dict[str, str]]:
    """The prescription form as the API's request, or one message per field that is wrong."""
    doc: dict[str, Any] = {"order": {"medication": {}}}
    for name, value in text_fields(form).items():
        if path := ORDER_FIELDS.get(name):
            target = doc
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = value
    if form.get("no_substitution"):
        doc["order"]["substitution_allowed"] = False
    try:
        if form.get("delivery") == "paper":  # no wallet: the same order, printed
            paper = PaperRequest.model_validate({"order": doc["order"]}, context=input_context(rules=rules))
            return IssueRequest.model_construct(connection_id="", order=paper.order), {}
        return IssueRequest.model_validate(doc, context=input_context(rules=rules)), {}
    except ValidationError as exc:
        return None, _form_errors(exc)


def _form_errors(exc: ValidationError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for e in exc.errors(include_url=False, include_input=False):
        message = e["msg"].removeprefix("Value error, ")
        name = FIELD_OF.get(tuple(str(p) for p in e["loc"])) or _named_in(message) or "form"
        errors.setdefault(name, message)
    return errors


def therapy_from_form(form, order: PrescriptionOrder) -> tuple[list[PrescriptionOrder] | None, dict[str, str]]:
    """The parts a form asks for: None for a single prescription (no parts, or 1), else each part's order."""
    fields = text_fields(form)
    if fields.get("parts", "1") == "1":
        return None, {}
    try:
        plan = TherapyPlan.model_validate({"parts": fields.get("parts"), "interval_days": fields.get("interval_days")})
        return therapy_orders(order, plan), {}
    except ValidationError as exc:
        return None, {str(e["loc"][0]) if e["loc"] else "parts": e["msg"].removeprefix("Value error, ")
                      for e in exc.errors(include_url=False, include_input=False)}


def _named_in(message: str) -> str | None:
    """The field a whole-order rule is about (e.g. "valid_until must not be before valid_from")."""
    return next((name for name in ORDER_FIELDS if message.startswith(name)), None)


def blank_form(connection_id: str = "", default_days: int = DEFAULT_VALIDITY_DAYS) -> dict[str, str]:
    today = dt.date.today()
    return {"connection_id": connection_id, "medication_code_system": "ATC", "redemptions": "1", "parts": "1",
            "interval_days": "28", "valid_from": today.isoformat(),
            "valid_until": (today + dt.timedelta(days=default_days)).isoformat()}


class DoctorPages:
    def __init__(self, service: DoctorService, links: ShortLinks, live: LiveHub):
        self.service, self.ctx, self.links, self.live = service, service.ctx, links, live
        self._printouts: dict[str, tuple[float, bytes, list]] = {}  # printout id -> (kept until, PDF, records)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.home),
            web.post("/invitations", self.new_invitation),
            web.post("/prescriptions", self.issue),
            web.get("/printouts/{printout_id}.pdf", self.printout),
            web.get("/prescriptions/{prescription_id}/revoke", self.confirm_revoke),
            web.post("/prescriptions/{prescription_id}/revoke", self.revoke),
            web.get("/fragments/invitation", self.invitation_fragment),
            web.get("/fragments/patients", self.patients_fragment),
            web.get("/fragments/prescriptions", self.prescriptions_fragment),
        ]

    # -- what the page shows ---------------------------------------------------------------------
    async def _invitation(self, request: web.Request) -> dict | None:
        """The invitation this session showed last, and the patient who connected through it."""
        invitation_id = (await get_session(request)).get("invitation_id")
        link = self.links.for_ref(invitation_id) if invitation_id else None
        if link is None:
            return None
        active = [c for c in await self.ctx.admin.connections(invitation_msg_id=invitation_id) if c.active]
        return {"invitation_id": invitation_id, "short_url": self.links.url(link), "qr": self.links.qr_path(link),
                "long_url": link.invitation_url,
                "connection": {"connection_id": active[0].connection_id,
                               "label": active[0].their_label or "unnamed wallet"} if active else None}

    async def _patients(self) -> list[dict]:
        patients = [{"connection_id": c.connection_id, "label": c.their_label or "unnamed wallet",
                     "since": c.created_at} for c in await self.ctx.admin.connections(state="active")]
        return sorted(patients, key=lambda p: p["since"] or "", reverse=True)

    async def _prescriptions(self) -> list:
        """The newest prescriptions, the parts of a therapy together and in part order."""
        records = list(islice(self.service.records.all(), LISTED))
        groups: dict[str, list] = {}
        for record in records:
            groups.setdefault(record.therapy_id or record.prescription_id, []).append(record)
        ordered = [r for group in sorted(groups.values(), key=lambda g: -max(r.created_at for r in g))
                   for r in sorted(group, key=lambda r: r.part)]
        return list(await asyncio.gather(*(self.service.view(r) for r in ordered)))

    async def _context(self, request: web.Request, form: dict | None = None,
                       errors: dict | None = None) -> dict[str, Any]:
        invitation = await self._invitation(request)
        connected = (invitation or {}).get("connection") or {}
        rules = self.ctx.config.prescribing
        form = form or blank_form(request.query.get("connection_id") or connected.get("connection_id", ""),
                                  rules.default_validity_days)
        patients, prescriptions = await asyncio.gather(self._patients(), self._prescriptions())
        return {"invitation": invitation, "patients": patients, "prescriptions": prescriptions, "form": form,
                "errors": errors or {}, "code_systems": sorted(CODE_SYSTEMS), "cred_def_id": self.service.cred_def_id,
                "default_days": rules.default_validity_days}

    async def home(self, request: web.Request) -> web.Response:
        return await render(request, "doctor.html", await self._context(request))

    async def invitation_fragment(self, request: web.Request) -> web.Response:
        return await fragment(request, "doctor/_invitation.html", {"invitation": await self._invitation(request)})

    async def patients_fragment(self, request: web.Request) -> web.Response:
        invitation = await self._invitation(request)
        selected = request.query.get("selected") or ((invitation or {}).get("connection") or {}).get("connection_id")
        return await fragment(request, "doctor/_patient_options.html",
                              {"patients": await self._patients(), "form": {"connection_id": selected or ""}})

    async def prescriptions_fragment(self, request: web.Request) -> web.Response:
        return await fragment(request, "doctor/_prescriptions.html", {"prescriptions": await self._prescriptions()})

    # -- what the doctor does -----------------------------------------------------------------------
    @page_action(Action.CONNECT)
    async def new_invitation(self, request: web.Request) -> web.Response:
        invitation = await create_invitation(self.ctx, alias="patient")
        self.links.create(invitation.invitation_id, invitation.invitation_url)
        (await get_session(request))["invitation_id"] = invitation.invitation_id
        raise see_other("/#connect")

    @page_action(Action.ISSUE, audit=AuditAction.ISSUED)
    async def issue(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str) and not k.startswith("_")}
        body, errors = issue_request_from_form(form, self.ctx.config.prescribing)
        parts, part_errors = therapy_from_form(form, body.order) if body is not None else (None, {})
        errors |= part_errors
        status = 422
        if body is not None and not errors:
            try:
                if form.get("delivery") == "paper":
                    return await self._print(request, parts or [body.order])
                if parts:
                    records = await self.service.issue_therapy(body.connection_id, parts,
                                                               prescriber=acting_prescriber(request))
                else:
                    records = [await self.service.issue(body.connection_id, body.order,
                                                        prescriber=acting_prescriber(request))]
            except DomainError as exc:  # no such connection, not onboarded, the chain or agent refused
                field = "connection_id" if "connection" in exc.reason else "form"
                status, errors = http_error(exc).status, {field: exc.reason}
            else:
                self.live.notify("prescription")
                what = f"{len(records)} parts of a therapy" if parts else "Prescription"
                await flash(request, f"{what} for {body.order.medication.name} offered to the patient's "
                                     "wallet; issued once the wallet accepts.")
                raise see_other("/#prescriptions")
        return await render(request, "doctor.html", await self._context(request, form, errors), status=status)

    async def _print(self, request: web.Request, orders: list[PrescriptionOrder]) -> web.Response:
        """Paper prescriptions: issued (their tokens mined), then offered for download once. The PDF holds
        the tokens' one-time keys, so it is kept in memory only, for this session, until it is downloaded
        or PRINTOUT_KEPT_S have passed; after a restart it is gone (revoke and print anew)."""
        records, pdf = await self.service.print_paper(orders, prescriber=acting_prescriber(request))
        printout_id = secrets.token_urlsafe(16)
        self._forget_old_printouts()
        self._printouts[printout_id] = (time.monotonic() + PRINTOUT_KEPT_S, pdf, records)
        session = await get_session(request)
        session["printouts"] = [*session.get("printouts", [])[-4:], printout_id]
        self.live.notify("prescription")
        return await render(request, "doctor_paper.html", {"printout_id": printout_id, "records": records,
                                                           "kept_min": PRINTOUT_KEPT_S // 60}, status=201)

    def _forget_old_printouts(self) -> None:
        now = time.monotonic()
        for printout_id in [p for p, (until, _, _) in self._printouts.items() if until < now]:
            del self._printouts[printout_id]

    @page_action(Action.ISSUE)
    async def printout(self, request: web.Request) -> web.Response:
        """The printout, once, to the session that made it."""
        printout_id = request.match_info["printout_id"]
        session = await get_session(request)
        self._forget_old_printouts()
        if printout_id not in session.get("printouts", []) or printout_id not in self._printouts:
            raise web.HTTPNotFound(text="This printout was downloaded already or has expired: revoke the "
                                        "prescription and print it again.")
        _, pdf, records = self._printouts.pop(printout_id)
        session["printouts"] = [p for p in session.get("printouts", []) if p != printout_id]
        response = web.Response(body=pdf, content_type="application/pdf", headers={
            "Content-Disposition": 'attachment; filename="paper-prescription.pdf"', "Cache-Control": "no-store"})
        await self.service.handed_over(records)  # the download goes out now: the paper prescriptions are issued
        self.live.notify("prescription")
        return response

    def _record(self, request: web.Request):
        record = self.service.records.get(request.match_info["prescription_id"])
        if record is None:
            raise not_found("prescription")
        return record

    @page_action(Action.REVOKE)
    async def confirm_revoke(self, request: web.Request) -> web.Response:
        record = self._record(request)
        return await render(request, "doctor_revoke.html", {"p": await self.service.view(record),
                                                            "revocable": record.state == PrescriptionState.ISSUED})

    @page_action(Action.REVOKE, audit=AuditAction.REVOKED)
    async def revoke(self, request: web.Request) -> web.Response:
        record = self._record(request)
        try:
            await self.service.revoke(record.prescription_id)
        except DomainError as exc:
            await flash(request, f"Not revoked: {exc.reason}", "error")
        else:
            self.live.notify("prescription")
            await flash(request, f"Revoked: {record.order.medication.name} for {record.order.patient_name}. "
                                 "Its token is cancelled; no pharmacy can redeem it any more.")
        raise see_other("/#prescriptions")
