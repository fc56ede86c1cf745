"""The pharmacy's REST API: each operation declared once (`erx_roles.api`), over `PharmacyService`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from erx_roles.api import Api, Page, PageQuery, WaitQuery, read_page
from erx_roles.connections import connection_api
from erx_roles.errors import Conflict
from erx_roles.integrators import Scope
from erx_roles.pharmacy.models import CheckState, DispenseCheck, PharmacyStatus, RequestBody, TrustedPrescriber, public
from erx_roles.pharmacy.service import PharmacyService


def pharmacy_api(service: PharmacyService) -> Api:
    api = Api("pharmacy")
    tag, trust = "checks", "trusted prescribers"

    @api.operation("GET", "/api/status", summary="The pharmacy: schema asked for, chain account, trust list size",
                   tag="pharmacy", response=PharmacyStatus)
    async def pharmacy_status(_: web.Request) -> PharmacyStatus:
        return PharmacyStatus(schema_id=service.ctx.config.prescription_schema_id,
                              chain_account=service.ctx.chain.address,
                              trusted_prescribers=sum(1 for _ in service.trusted.all()))

    api.include(connection_api(service.ctx, alias="customer"))

    @api.operation("POST", "/api/checks", summary="Ask for a prescription: a QR code, or over a connection",
                   tag=tag, body=RequestBody, response=DispenseCheck, status=201, errors=(404, 409, 502))
    async def request_prescription(_: web.Request, body: RequestBody) -> DispenseCheck:
        """Without `connection_id` the answer carries a `short_url` to show as a QR code (`qr_png_url`,
        `qr_svg_url` serve it as images; `invitation_url` is the whole invitation, too long for a QR code).
        The check then moves to `verified` or `refused` (long poll `GET /api/checks/{id}?wait=30`, or the
        `prescription.presented` / `prescription.refused` webhooks)."""
        return public(await service.request(body.connection_id))

    @api.operation("GET", "/api/checks", summary="Dispensing history, newest first", tag=tag, query=PageQuery,
                   response=Page[DispenseCheck])
    async def list_checks(_: web.Request, query: PageQuery) -> Page[DispenseCheck]:
        page = read_page(service.checks, query)
        return Page[DispenseCheck](items=[public(c) for c in page.items], next=page.next, total=page.total)

    @api.operation("GET", "/api/checks/{check_id}", tag=tag, query=WaitQuery, response=DispenseCheck,
                   summary="One check (long poll with ?wait= until verified or refused)", errors=(404,))
    async def get_check(_: web.Request, check_id: str, query: WaitQuery) -> DispenseCheck:
        return public(await service.wait_checked(check_id, query.wait) if query.wait else service.get(check_id))

    @api.operation("POST", "/api/checks/{check_id}/dispense", tag=tag, response=DispenseCheck,
                   summary="Dispense: spend the prescription's token on chain", errors=(404, 409, 503))
    async def dispense_prescription(_: web.Request, check_id: str) -> DispenseCheck:
        """Exactly one of racing pharmacies wins; the others get `refused` / `already_redeemed`.
        A 503 means the chain did not confirm: do not hand out the medication yet."""
        return public(await service.dispense(check_id))

    @api.operation("GET", "/api/checks/{check_id}/fhir", tag=tag, response=dict[str, Any], errors=(404, 409),
                   summary="A dispensed check as a FHIR R4 MedicationDispense")
    async def get_fhir_dispense(_: web.Request, check_id: str) -> dict[str, Any]:
        check = service.get(check_id)
        if check.state != CheckState.DISPENSED:
            raise Conflict(f"check is {check.state}; only a dispensed check has a MedicationDispense")
        return await service.fhir_dispense(check)

    @api.operation("GET", "/api/trusted-prescribers", summary="This pharmacy's overrides (allow/deny per credential definition) on top of the national register",
                   tag=trust, query=PageQuery, response=Page[TrustedPrescriber])
    async def list_trusted_prescribers(_: web.Request, query: PageQuery) -> Page[TrustedPrescriber]:
        return read_page(service.trusted, query)

    @api.operation("POST", "/api/trusted-prescribers", summary="Allow or deny a prescriber's credential definition here, whatever the national register says",
                   tag=trust, body=TrustedPrescriber, response=TrustedPrescriber, status=201,
                   scope=Scope.TRUST_LIST)
    async def add_trusted_prescriber(_: web.Request, body: TrustedPrescriber) -> TrustedPrescriber:
        return service.trust(body)

    @api.operation("DELETE", "/api/trusted-prescribers/{cred_def_id}", summary="Remove an override: the national register decides again",
                   tag=trust, errors=(404,), scope=Scope.TRUST_LIST)
    async def remove_trusted_prescriber(_: web.Request, cred_def_id: str) -> None:
        service.distrust(cred_def_id)

    return api
