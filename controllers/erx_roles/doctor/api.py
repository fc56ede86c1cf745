"""The doctor's REST API: each operation declared once (`erx_roles.api`), over `DoctorService`."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from aiohttp import web

from erx_roles.api import Api, Page, PageQuery, WaitQuery, read_page
from erx_roles.connections import connection_api
from erx_roles.doctor.models import DoctorStatus, FhirIssueRequest, IssueRequest, PrescriptionView
from erx_roles.doctor.service import DoctorService
from erx_roles.errors import Conflict
from erx_roles.http import ApiError
from erx_schemas.fhir import FhirMappingError, medication_request_from_order, order_from_medication_request


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
                   body=IssueRequest, response=PrescriptionView, status=201, errors=(404, 409, 502))
    async def issue_prescription(_: web.Request, body: IssueRequest) -> PrescriptionView:
        """Creates the one-time key, sends the token's create to the chain (batched with concurrent
        issuances) and offers the credential at once. The answer is `offered`; the prescription is
        `issued` once the wallet has stored it and the token is mined (long poll
        `GET /api/prescriptions/{id}?wait=30`, or the `prescription.issued` webhook). Should the create
        fail, the offer is withdrawn (or the stored credential revoked) and the prescription ends `failed`."""
        return await service.view(await service.issue(body.connection_id, body.order))

    @api.operation("POST", "/api/prescriptions/fhir", summary="Issue a prescription from a FHIR MedicationRequest",
                   tag=tag, body=FhirIssueRequest, response=PrescriptionView, status=201,
                   errors=(404, 409, 502))
    async def issue_fhir_prescription(_: web.Request, body: FhirIssueRequest) -> PrescriptionView:
        """FHIR R4 MedicationRequest in; how it maps onto the credential is in docs/fhir.md. What
        cannot be mapped is refused with a 422 naming the FHIR element."""
        try:
            order = order_from_medication_request(body.medication_request)
        except FhirMappingError as exc:
            raise ApiError(422, "the MedicationRequest cannot be mapped to a prescription",
                           fields=[{"field": f"medication_request: {p.path}", "message": p.message}
                                   for p in exc.problems]) from None
        return await service.view(await service.issue(body.connection_id, order))

    @api.operation("GET", "/api/prescriptions", summary="Prescriptions issued by this practice, newest first",
                   tag=tag, query=PageQuery, response=Page[PrescriptionView])
    async def list_prescriptions(_: web.Request, query: PageQuery) -> Page[PrescriptionView]:
        page = read_page(service.records, query)
        views = await asyncio.gather(*(service.view(r) for r in page.items))
        return Page[PrescriptionView](items=list(views), next=page.next, total=page.total)

    @api.operation("GET", "/api/prescriptions/{prescription_id}", tag=tag, query=WaitQuery,
                   summary="One prescription with its live token status (long poll with ?wait= until issued)",
                   response=PrescriptionView, errors=(404,))
    async def get_prescription(_: web.Request, prescription_id: str, query: WaitQuery) -> PrescriptionView:
        record = await service.wait_issued(prescription_id, query.wait) if query.wait else service.get(prescription_id)
        return await service.view(record)

    @api.operation("GET", "/api/prescriptions/{prescription_id}/fhir", tag=tag, response=dict[str, Any],
                   summary="One prescription as a FHIR R4 MedicationRequest", errors=(404, 409))
    async def get_fhir_prescription(_: web.Request, prescription_id: str) -> dict[str, Any]:
        record = service.get(prescription_id)
        try:
            return medication_request_from_order(record.order, prescription_id=record.prescription_id,
                                                 prescriber=service.prescriber,
                                                 authored_on=dt.datetime.fromtimestamp(record.created_at, dt.UTC))
        except FhirMappingError as exc:  # not expected: every accepted order has a FHIR form
            raise Conflict(f"this prescription has no valid FHIR form: {exc}") from None

    @api.operation("POST", "/api/prescriptions/{prescription_id}/revoke", tag=tag, response=PrescriptionView,
                   summary="Revoke: cancel the token on chain, then revoke the credential",
                   errors=(404, 409, 502, 503))
    async def revoke_prescription(_: web.Request, prescription_id: str) -> PrescriptionView:
        return await service.view(await service.revoke(prescription_id))

    return api
