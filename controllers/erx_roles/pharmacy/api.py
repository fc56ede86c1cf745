"""The pharmacy's REST API: each operation declared once (`erx_roles.api`), over `PharmacyService`."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from erx_core.documents import MAX_UPLOAD_BYTES, UploadRejected, codes_in_upload
from erx_roles.http import ApiError
from erx_schemas.paper import PREFIX as PICKUP_PREFIX

from erx_core.audit import AuditAction
from erx_core.staff import Action
from erx_roles.api import Api, Page, PageQuery, WaitQuery, read_page
from erx_roles.connections import connection_api
from erx_roles.errors import Conflict
from erx_roles.integrators import Scope
from erx_roles.pharmacy.models import (CheckState, DispenseBody, DispenseCheck, PaperCheckBody, PharmacyStatus,
                                       ReceiptView, RequestBody, TrustedPrescriber, VerifiedReceipt, VerifyReceiptBody,
                                       public)
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
                   tag=tag, body=RequestBody, response=DispenseCheck, status=201, errors=(404, 409, 502),
                   action=Action.CHECK, audit=AuditAction.CHECKED)
    async def request_prescription(_: web.Request, body: RequestBody) -> DispenseCheck:
        """Without `connection_id` the answer carries a `short_url` to show as a QR code (`qr_png_url`,
        `qr_svg_url` serve it as images; `invitation_url` is the whole invitation, too long for a QR code).
        The check then moves to `verified` or `refused` (long poll `GET /api/checks/{id}?wait=30`, or the
        `prescription.presented` / `prescription.refused` webhooks)."""
        return public(await service.request(body.connection_id))

    @api.operation("POST", "/api/pickup-codes", summary="Check a paper prescription's (or a representative's) pickup code",
                   tag=tag, body=PaperCheckBody, response=DispenseCheck, status=201, errors=(422, 502, 503),
                   action=Action.CHECK, audit=AuditAction.CHECKED)
    async def check_pickup_code(_: web.Request, body: PaperCheckBody) -> DispenseCheck:
        """The scanned or pasted `ERX1:` code: the practice's signature is verified against its DID's
        verkey on the Indy network, the practice against the register of prescribers, the token on chain.
        The answer is `verified` (dispense it as any check; `channel` says `paper` or `representative`)
        or `refused` with the reason. Text that is no pickup code is a 422."""
        return public(await service.check_pickup_code(body.code))

    @api.operation("POST", "/api/pickup-codes/scan", tag=tag, response=DispenseCheck, status=201,
                   summary="Check the pickup code in an uploaded photo or scan (PNG, JPEG) or PDF",
                   errors=(413, 415, 422, 502, 503), action=Action.CHECK, audit=AuditAction.CHECKED)
    async def scan_pickup_code(request: web.Request) -> DispenseCheck:
        """The request body is the image or PDF itself, with its Content-Type; the first QR code in it
        that is a pickup code is checked as by `POST /api/pickup-codes`."""
        if request.content_length is not None and request.content_length > MAX_UPLOAD_BYTES:
            raise ApiError(413, f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):  # streamed: past aiohttp's 1 MiB limit
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                raise ApiError(413, f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
            chunks.append(chunk)
        data = b"".join(chunks)
        try:
            codes = await asyncio.to_thread(codes_in_upload, data, request.content_type)
        except UploadRejected as exc:
            raise ApiError(415 if "content type" in str(exc) or "declared" in str(exc) else 422, str(exc)) from None
        pickup = [code for code in codes if code.startswith(PICKUP_PREFIX)]
        if not pickup:
            raise ApiError(422, "no pickup code (ERX1:…) found in the upload" if not codes else
                           f"the upload holds {len(codes)} QR code(s), none a pickup code (ERX1:…)")
        return public(await service.check_pickup_code(pickup[0]))

    @api.operation("GET", "/api/checks", summary="Dispensing history, newest first", tag=tag, query=PageQuery,
                   response=Page[DispenseCheck], action=Action.VIEW)
    async def list_checks(_: web.Request, query: PageQuery) -> Page[DispenseCheck]:
        page = read_page(service.checks, query)
        return Page[DispenseCheck](items=[public(c) for c in page.items], next=page.next, total=page.total)

    @api.operation("GET", "/api/checks/{check_id}", tag=tag, query=WaitQuery, response=DispenseCheck,
                   summary="One check (long poll with ?wait= until verified or refused)", errors=(404,),
                   action=Action.VIEW)
    async def get_check(_: web.Request, check_id: str, query: WaitQuery) -> DispenseCheck:
        return public(await service.wait_checked(check_id, query.wait) if query.wait else service.get(check_id))

    @api.operation("POST", "/api/checks/{check_id}/dispense", tag=tag, body=DispenseBody, response=DispenseCheck,
                   summary="Dispense: spend the prescription's token on chain", errors=(404, 409, 503),
                   action=Action.DISPENSE, audit=AuditAction.DISPENSED)
    async def dispense_prescription(_: web.Request, check_id: str, body: DispenseBody) -> DispenseCheck:
        """Exactly one of racing pharmacies wins; the others get `refused` / `already_redeemed`.
        A 503 means the chain did not confirm: do not hand out the medication yet.

        The body may be empty (`{}` or none): dispensed as prescribed. With `substitution`, a generic or
        another pack size is handed over; a 422 names the rule it breaks (a generic only if the prescription
        allows substitution, of the prescribed strength and form, with another product code; a pack of at
        most the prescribed quantity; a reason). The dispensed check then carries `receipt_jws`, the signed
        receipt (see `GET /api/checks/{check_id}/receipt`)."""
        return public(await service.dispense(check_id, body.substitution))

    @api.operation("GET", "/api/checks/{check_id}/fhir", tag=tag, response=dict[str, Any], errors=(404, 409),
                   summary="A dispensed check as a FHIR R4 MedicationDispense", action=Action.VIEW)
    async def get_fhir_dispense(_: web.Request, check_id: str) -> dict[str, Any]:
        check = service.get(check_id)
        if check.state != CheckState.DISPENSED:
            raise Conflict(f"check is {check.state}; only a dispensed check has a MedicationDispense")
        return await service.fhir_dispense(check)

    @api.operation("GET", "/api/checks/{check_id}/receipt", tag="receipts", response=ReceiptView,
                   errors=(404, 409, 503), summary="A dispensed check's signed receipt: the JWS and what it says",
                   action=Action.VIEW)
    async def get_receipt(_: web.Request, check_id: str) -> ReceiptView:
        """The FHIR MedicationDispense with the spend's transaction hash, signed with the pharmacy's DID key
        (compact JWS, EdDSA, typ `erx-receipt+jwt`). Anyone verifies it against the pharmacy's verkey on the
        Indy network (`POST /api/receipts/verify`). 503 while its signing is still being retried."""
        return service.receipt(check_id)

    @api.operation("GET", "/api/checks/{check_id}/receipt.pdf", tag="receipts", produces=("application/pdf",),
                   errors=(404, 409, 503), summary="A dispensed check's receipt, printable (PDF with its QR code)",
                   action=Action.VIEW)
    async def get_receipt_pdf(_: web.Request, check_id: str) -> web.Response:
        """One A4 page: what was dispensed, the spend transaction, and the signed receipt as a QR code. The
        paper path's receipt (a connectionless or paper check has no wallet to send it to)."""
        pdf = await service.receipt_pdf(check_id)
        return web.Response(body=pdf, content_type="application/pdf", headers={
            "Content-Disposition": f'inline; filename="receipt-{check_id}.pdf"', "Cache-Control": "no-store"})

    @api.operation("POST", "/api/receipts/verify", tag="receipts", body=VerifyReceiptBody, response=VerifiedReceipt,
                   public=True, errors=(503,), summary="Verify anyone's dispense receipt against its signer's verkey")
    async def verify_receipt(_: web.Request, body: VerifyReceiptBody) -> VerifiedReceipt:
        """No token needed. The receipt, if its signature verifies against the verkey the Indy network holds
        for the DID its key id names; otherwise 422 with `problem`: `malformed`, `unsupported_alg`,
        `unsupported_kid`, `wrong_type`, `bad_key`, `bad_signature`, `signer_mismatch`, `bad_payload`,
        `unknown_signer` (no such DID on the network) or `invalid_receipt` (signed, but no valid receipt).
        Whether the signer is a pharmacy is the caller's to judge (`signer_did`)."""
        return await service.verify_receipt(body.jws)

    @api.operation("GET", "/api/trusted-prescribers", summary="This pharmacy's overrides (allow/deny per credential definition) on top of the national register",
                   tag=trust, query=PageQuery, response=Page[TrustedPrescriber])
    async def list_trusted_prescribers(_: web.Request, query: PageQuery) -> Page[TrustedPrescriber]:
        return read_page(service.trusted, query)

    @api.operation("POST", "/api/trusted-prescribers", summary="Allow or deny a prescriber's credential definition here, whatever the national register says",
                   tag=trust, body=TrustedPrescriber, response=TrustedPrescriber, status=201,
                   scope=Scope.TRUST_LIST, action=Action.MANAGE_TRUST, audit=AuditAction.TRUST_SET)
    async def add_trusted_prescriber(_: web.Request, body: TrustedPrescriber) -> TrustedPrescriber:
        return service.trust(body)

    @api.operation("DELETE", "/api/trusted-prescribers/{cred_def_id}", summary="Remove an override: the national register decides again",
                   tag=trust, errors=(404,), scope=Scope.TRUST_LIST, action=Action.MANAGE_TRUST,
                   audit=AuditAction.TRUST_REMOVED)
    async def remove_trusted_prescriber(_: web.Request, cred_def_id: str) -> None:
        service.distrust(cred_def_id)

    return api
