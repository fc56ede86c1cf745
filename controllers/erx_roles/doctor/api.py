"""The doctor's REST API: each operation declared once (`erx_roles.api`), over `DoctorService`."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from erx_core.audit import AuditAction
from erx_core.staff import Action
from erx_roles.api import Api, Page, PageQuery, WaitQuery, read_page
from erx_roles.connections import connection_api
from erx_roles.doctor.models import (DoctorStatus, FhirIssueRequest, FhirTherapyRequest, IssueRequest, PaperRequest,
                                     PrescriptionState, PrescriptionView, TherapyRequest, TherapyView)
from erx_roles.doctor.service import DoctorService
from erx_roles.errors import Conflict
from erx_roles.http import ApiError, field_problems
from erx_roles.integrators import caller_of
from erx_schemas.fhir import (FhirMappingError, medication_request_from_order, order_from_medication_request,
                              orders_from_therapy_requests)
from erx_schemas.prescription import Prescriber, therapy_orders


VIEW = Action.VIEW


UNSETTLED = (PrescriptionState.OFFERED, PrescriptionState.CREATING_TOKEN, PrescriptionState.PRINTING)


def prescriber(request: web.Request) -> Prescriber:
    """The prescriber acting (the operation's `action=Action.ISSUE` lets no one else through)."""
    return caller_of(request).person.prescriber()


def doctor_api(service: DoctorService) -> Api:
    api = Api("doctor")
    tag = "prescriptions"

    @api.operation("GET", "/api/status", summary="The practice: its credential definition, DID, chain account",
                   tag="practice", response=DoctorStatus)
    async def practice_status(_: web.Request) -> DoctorStatus:
        return DoctorStatus(cred_def_id=service.cred_def_id, issuer_did=service.issuer_did,
                            schema_id=service.ctx.config.prescription_schema_id,
                            chain_account=service.ctx.chain.address)

    api.include(connection_api(service.ctx, alias="patient"))

    @api.operation("POST", "/api/prescriptions", summary="Issue a prescription to a connected wallet", tag=tag,
                   body=IssueRequest, response=PrescriptionView, status=201, errors=(404, 409, 502),
                   action=Action.ISSUE, audit=AuditAction.ISSUED)
    async def issue_prescription(request: web.Request, body: IssueRequest) -> PrescriptionView:
        """Creates the one-time key, sends the token's create to the chain (batched with concurrent
        issuances) and offers the credential at once. The answer is `offered`; the prescription is
        `issued` once the wallet has stored it and the token is mined (long poll
        `GET /api/prescriptions/{id}?wait=30`, or the `prescription.issued` webhook). Should the create
        fail, the offer is withdrawn (or the stored credential revoked) and the prescription ends `failed`."""
        return await service.view(await service.issue(body.connection_id, body.order, prescriber=prescriber(request)))

    @api.operation("POST", "/api/prescriptions/fhir", summary="Issue a prescription from a FHIR MedicationRequest",
                   tag=tag, body=FhirIssueRequest, response=PrescriptionView, status=201,
                   errors=(404, 409, 502), action=Action.ISSUE, audit=AuditAction.ISSUED)
    async def issue_fhir_prescription(request: web.Request, body: FhirIssueRequest) -> PrescriptionView:
        """FHIR R4 MedicationRequest in; how it maps onto the credential is in docs/fhir.md. What
        cannot be mapped is refused with a 422 naming the FHIR element."""
        try:
            order = order_from_medication_request(body.medication_request, rules=service.ctx.config.prescribing)
        except FhirMappingError as exc:
            raise ApiError(422, "the MedicationRequest cannot be mapped to a prescription",
                           fields=[{"field": f"medication_request: {p.path}", "message": p.message}
                                   for p in exc.problems]) from None
        return await service.view(await service.issue(body.connection_id, order, prescriber=prescriber(request)))

    @api.operation("POST", "/api/therapies", summary="Issue a therapy in parts (multi-part prescription or repeats)",
                   tag=tag, body=TherapyRequest, response=TherapyView, status=201, errors=(404, 409, 422),
                   action=Action.ISSUE, audit=AuditAction.ISSUED)
    async def issue_therapy(request: web.Request, body: TherapyRequest) -> TherapyView:
        """Each part is its own credential and token with its own validity window: the first part over
        the order's window, each further part `plan.interval_days` later and valid as long. The parts are
        offered at once and linked by the therapy id in the credential; a pharmacy redeems the part valid
        today. A part whose offer failed is shown `failed` (the others go on)."""
        try:
            orders = therapy_orders(body.order, body.plan)
        except ValidationError as exc:
            raise ApiError(422, "invalid request body", fields=field_problems(exc)) from None
        return await therapy_view(await service.issue_therapy(body.connection_id, orders,
                                                              prescriber=prescriber(request)))

    @api.operation("POST", "/api/therapies/fhir", summary="Issue a therapy from one FHIR MedicationRequest per part",
                   tag=tag, body=FhirTherapyRequest, response=TherapyView, status=201, errors=(404, 409, 422),
                   action=Action.ISSUE, audit=AuditAction.ISSUED)
    async def issue_fhir_therapy(request: web.Request, body: FhirTherapyRequest) -> TherapyView:
        """Each part's window and repeats from its own `dispenseRequest` (`validityPeriod`,
        `numberOfRepeatsAllowed`); parts numbered by the `urn:erx:fhir:extension:therapy-part` extension
        (or in list order without one). See docs/fhir.md."""
        try:
            orders = orders_from_therapy_requests(body.medication_requests, rules=service.ctx.config.prescribing)
        except FhirMappingError as exc:
            raise ApiError(422, "the MedicationRequests cannot be mapped to a therapy",
                           fields=[{"field": f"medication_requests: {p.path}", "message": p.message}
                                   for p in exc.problems]) from None
        return await therapy_view(await service.issue_therapy(body.connection_id, orders,
                                                              prescriber=prescriber(request)))

    @api.operation("POST", "/api/prescriptions/paper", tag=tag, body=PaperRequest, status=201,
                   summary="A paper prescription (PDF) for a patient without a wallet", errors=(409, 422, 503),
                   produces=("application/pdf",), action=Action.ISSUE, audit=AuditAction.ISSUED)
    async def issue_paper_prescription(request: web.Request, body: PaperRequest) -> web.Response:
        """One page per prescription (per part of a therapy, with `plan`): the prescription and a QR code
        holding its pickup code, signed by the practice's DID key, with the token's one-time key. The
        answer comes once the token is mined; the practice keeps no copy of the key, so the PDF cannot be
        printed again (revoke and issue anew). Whoever holds the page can redeem it. The prescription ids
        are in the `Erx-Prescription-Ids` header."""
        try:
            orders = therapy_orders(body.order, body.plan) if body.plan else [body.order]
        except ValidationError as exc:
            raise ApiError(422, "invalid request body", fields=field_problems(exc)) from None
        records, pdf = await service.print_paper(orders, prescriber=prescriber(request))
        response = web.Response(body=pdf, status=201, content_type="application/pdf", headers={
            "Erx-Prescription-Ids": ",".join(r.prescription_id for r in records), "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="prescription-{records[0].prescription_id}.pdf"'})
        await service.handed_over(records)  # the answer goes out now (a crash before: cancelled by housekeeping)
        return response

    @api.operation("GET", "/api/therapies/{therapy_id}", tag=tag, response=TherapyView, errors=(404,), action=VIEW,
                   summary="A therapy's parts, each with its live status")
    async def get_therapy(_: web.Request, therapy_id: str) -> TherapyView:
        return await therapy_view(service.therapy(therapy_id))

    @api.operation("GET", "/api/therapies/{therapy_id}/fhir", tag=tag, response=list[dict[str, Any]],
                   summary="A therapy as FHIR R4 MedicationRequests, one per part", errors=(404, 409), action=VIEW)
    async def get_fhir_therapy(_: web.Request, therapy_id: str) -> list[dict[str, Any]]:
        return [fhir_request(record) for record in service.therapy(therapy_id)]

    @api.operation("POST", "/api/therapies/{therapy_id}/revoke", tag=tag, response=TherapyView,
                   summary="Revoke every issued part of a therapy not yet revoked", errors=(404, 409, 502, 503),
                   action=Action.REVOKE, audit=AuditAction.REVOKED)
    async def revoke_therapy(_: web.Request, therapy_id: str) -> TherapyView:
        """A 409 while a part is still on its way (offered, its token being created, or printing): such a
        part would become redeemable after the revoke. Revoke once the wallet has answered."""
        parts = service.therapy(therapy_id)
        unsettled = [r.part for r in parts if r.state in UNSETTLED]
        if unsettled:
            raise Conflict(f"part(s) {', '.join(map(str, unsettled))} are not issued yet (offered to the wallet or "
                           "their token on its way): revoke the therapy once they are")
        for record in parts:
            if record.state == PrescriptionState.ISSUED:
                await service.revoke(record.prescription_id)
        return await therapy_view(service.therapy(therapy_id))

    async def therapy_view(parts: list) -> TherapyView:
        views = await asyncio.gather(*(service.view(r) for r in parts))
        return TherapyView(therapy_id=parts[0].therapy_id or parts[0].prescription_id, parts=list(views))

    def fhir_request(record) -> dict[str, Any]:
        try:
            return medication_request_from_order(
                record.order, prescription_id=record.prescription_id, prescriber=record.prescriber or service.prescriber,
                authored_on=dt.datetime.fromtimestamp(record.created_at, dt.UTC), therapy=record.therapy)
        except FhirMappingError as exc:  # not expected: every accepted order has a FHIR form
            raise Conflict(f"this prescription has no valid FHIR form: {exc}") from None

    @api.operation("GET", "/api/prescriptions", summary="Prescriptions issued by this practice, newest first",
                   tag=tag, query=PageQuery, response=Page[PrescriptionView], action=VIEW)
    async def list_prescriptions(_: web.Request, query: PageQuery) -> Page[PrescriptionView]:
        page = read_page(service.records, query)
        views = await asyncio.gather(*(service.view(r) for r in page.items))
        return Page[PrescriptionView](items=list(views), next=page.next, total=page.total)

    @api.operation("GET", "/api/prescriptions/{prescription_id}", tag=tag, query=WaitQuery,
                   summary="One prescription with its live token status (long poll with ?wait= until issued)",
                   response=PrescriptionView, errors=(404,), action=VIEW)
    async def get_prescription(_: web.Request, prescription_id: str, query: WaitQuery) -> PrescriptionView:
        record = await service.wait_issued(prescription_id, query.wait) if query.wait else service.get(prescription_id)
        return await service.view(record)

    @api.operation("GET", "/api/prescriptions/{prescription_id}/fhir", tag=tag, response=dict[str, Any],
                   summary="One prescription as a FHIR R4 MedicationRequest", errors=(404, 409), action=VIEW)
    async def get_fhir_prescription(_: web.Request, prescription_id: str) -> dict[str, Any]:
        return fhir_request(service.get(prescription_id))

    @api.operation("POST", "/api/prescriptions/{prescription_id}/revoke", tag=tag, response=PrescriptionView,
                   summary="Revoke: cancel the token on chain, then revoke the credential",
                   errors=(404, 409, 502, 503), action=Action.REVOKE, audit=AuditAction.REVOKED)
    async def revoke_prescription(_: web.Request, prescription_id: str) -> PrescriptionView:
        return await service.view(await service.revoke(prescription_id))

    return api
