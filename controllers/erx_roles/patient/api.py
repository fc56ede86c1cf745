"""The wallet stand-in's API: what a mobile wallet's user does (open an invitation, accept or decline an
offer, approve or decline a proof request), over `PatientService`. Not an organisation's API: one token,
the wallet owner's, and no OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from erx_core import ids
from erx_roles.http import ApiError, json_response, parse_body
from erx_roles.patient.models import Approve, OpenInvitation, Share
from erx_roles.patient.service import PatientService


def patient_routes(service: PatientService) -> list[web.RouteDef]:
    async def status(_: web.Request) -> web.Response:
        return json_response({"role": "patient", "auto_respond": service.auto_respond})

    async def open_invitation(request: web.Request) -> web.Response:
        return json_response(await service.open_invitation(await parse_body(request, OpenInvitation)), status=201)

    async def share(request: web.Request) -> web.Response:
        """Choose the prescription to present when this connection next asks for one."""
        body = await parse_body(request, Share)
        if not ids.is_valid("record", request.match_info["connection_id"]):
            raise ApiError(422, "invalid path parameter",
                           fields=[{"field": "connection_id", "message": "not a valid record id"}])
        service.choose(request.match_info["connection_id"], body.credential_id)
        return json_response({"connection_id": request.match_info["connection_id"], **body.model_dump()})

    async def credentials(request: web.Request) -> web.Response:
        prescription_id = request.query.get("prescription_id")
        if prescription_id is not None and not ids.is_valid("record", prescription_id):
            raise ApiError(422, "invalid query parameters",
                           fields=[{"field": "prescription_id", "message": "not a valid record id"}])
        return json_response(await service.credentials(prescription_id))

    async def pickup_code(request: web.Request) -> web.Response:
        """The code (and what it is) to hand one redemption to a representative."""
        credential_id = request.match_info["credential_id"]
        if not ids.is_valid("record", credential_id):
            raise ApiError(422, "invalid path parameter",
                           fields=[{"field": "credential_id", "message": "not a valid record id"}])
        return json_response({"credential_id": credential_id, "pickup_code": await service.pickup_code(credential_id)})

    async def receipts(_: web.Request) -> web.Response:
        """The dispense receipts pharmacies sent, each with whether it verified against the pharmacy's
        verkey on the Indy network."""
        return json_response(await service.held_receipts())

    async def offers(_: web.Request) -> web.Response:
        return json_response(await service.offers())

    async def accept_offer(request: web.Request) -> web.Response:
        return json_response(await service.accept_offer(request.match_info["cred_ex_id"]))

    async def decline_offer(request: web.Request) -> web.Response:
        return json_response(await service.decline_offer(request.match_info["cred_ex_id"]))

    async def requests(_: web.Request) -> web.Response:
        return json_response(await service.requests())

    async def approve(request: web.Request) -> web.Response:
        body = await parse_body(request, Approve)
        pres_ex_id = request.match_info["pres_ex_id"]
        await service.request_view(pres_ex_id)
        return json_response(await service.approve(pres_ex_id, body.credential_id))

    async def decline(request: web.Request) -> web.Response:
        return json_response(await service.decline(request.match_info["pres_ex_id"]))

    return [
        web.get("/api/status", status),
        web.post("/api/invitations", open_invitation),
        web.get("/api/credentials", credentials),
        web.get("/api/credentials/{credential_id}/pickup-code", pickup_code),
        web.post("/api/connections/{connection_id}/share", share),
        web.get("/api/receipts", receipts),
        web.get("/api/offers", offers),
        web.post("/api/offers/{cred_ex_id}/accept", accept_offer),
        web.post("/api/offers/{cred_ex_id}/decline", decline_offer),
        web.get("/api/requests", requests),
        web.post("/api/requests/{pres_ex_id}/approve", approve),
        web.post("/api/requests/{pres_ex_id}/decline", decline),
    ]
