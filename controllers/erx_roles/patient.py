"""The patient's wallet stand-in: a holder agent with a small controller.

It does what a mobile wallet's user does: open an invitation link (scanned QR code), accept a
credential offer, and answer a proof request revealing exactly what was asked. By default it
answers on its own (`auto_respond`), like a user tapping "accept" and "share"; with it off,
offers and requests wait for `accept` / `approve` / `decline` through the API.

Which prescription to present is the user's choice: a credential may be named when opening the
invitation (the wallet's "share this prescription" flow); otherwise the newest matching one is used.
"""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import parse_qs, urlparse

from aiohttp import web
from pydantic import BaseModel, Field

from erx_core.acapy_admin import AdminApiError
from erx_core.events import Payload
from erx_roles.context import RoleContext
from erx_roles.http import ApiError, json_response, parse_body

LOG = logging.getLogger("erx.patient")
ISSUE_TOPIC = "issue_credential_v2_0"
PROOF_TOPIC = "present_proof_v2_0"


class OpenInvitation(BaseModel):
    invitation_url: str = Field(min_length=10, max_length=20000)
    # present this credential (wallet referent) if the invitation carries a proof request
    credential_id: str | None = None


class Share(BaseModel):
    credential_id: str = Field(min_length=1)


class HeldCredential(BaseModel):
    credential_id: str
    cred_def_id: str
    attributes: dict[str, str]


def decode_invitation(url: str) -> dict:
    """The out-of-band invitation carried in an invitation URL (`?oob=` base64url JSON)."""
    query = parse_qs(urlparse(url).query)
    encoded = (query.get("oob") or query.get("c_i") or [None])[0]
    if not encoded:
        raise ApiError(422, "not an invitation link: no ?oob= parameter")
    try:
        return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, json.JSONDecodeError):
        raise ApiError(422, "the invitation link's ?oob= parameter is not base64url JSON") from None


class PatientService:
    def __init__(self, ctx: RoleContext, auto_respond: bool = True):
        self.ctx = ctx
        self.auto_respond = auto_respond
        # invitation id or connection id -> credential the user chose to share there
        self._chosen: dict[str, str] = {}
        ctx.bus.subscribe(ISSUE_TOPIC, self._on_issue_event)
        ctx.bus.subscribe(PROOF_TOPIC, self._on_proof_event)

    async def open_invitation(self, body: OpenInvitation) -> dict:
        invitation = decode_invitation(body.invitation_url)
        if body.credential_id:
            self._chosen[invitation.get("@id", "")] = body.credential_id
        try:
            record = await self.ctx.admin.receive_invitation(invitation)
        except AdminApiError as exc:
            raise ApiError(422, f"the wallet could not use this invitation: {exc.reason}") from None
        return {"oob_id": record.get("oob_id"), "connection_id": record.get("connection_id"),
                "state": record.get("state")}

    async def _on_issue_event(self, topic: str, payload: Payload) -> None:
        if not self.auto_respond:
            return
        state, cred_ex_id = payload.get("state"), payload.get("cred_ex_id")
        if state == "offer-received":
            await self.ctx.admin.send_credential_request(cred_ex_id)
        elif state == "credential-received":
            await self.ctx.admin.post(f"/issue-credential-2.0/records/{cred_ex_id}/store", {})

    async def _on_proof_event(self, topic: str, payload: Payload) -> None:
        if self.auto_respond and payload.get("state") == "request-received":
            await self.approve(payload["pres_ex_id"])

    async def approve(self, pres_ex_id: str, credential_id: str | None = None) -> dict:
        """Answer a proof request from one credential, revealing exactly the requested attributes."""
        record = await self.ctx.admin.presentation_exchange(pres_ex_id)
        request = ((record.get("by_format") or {}).get("pres_request") or {}).get("anoncreds") or {}
        credential_id = (credential_id or self._chosen.pop(self._invitation_id(record), None)
                         or self._chosen.pop(record.get("connection_id") or "", None))
        candidates = await self.ctx.admin.credentials_for_request(pres_ex_id)
        referents = list(request.get("requested_attributes", {})) + list(request.get("requested_predicates", {}))
        usable = [c["cred_info"] for c in candidates
                  if set(referents) <= set(c.get("presentation_referents", []))]
        if credential_id:
            usable = [c for c in usable if c["referent"] == credential_id]
        if not usable:
            await self.ctx.admin.problem_report(pres_ex_id, "no prescription in this wallet matches the request")
            return {"pres_ex_id": pres_ex_id, "state": "declined"}
        chosen = usable[-1] if credential_id else max(usable, key=lambda c: c["attrs"].get("issue_date", ""))
        unmet = [p for p in request.get("requested_predicates", {}).values() if not _satisfies(chosen["attrs"], p)]
        if unmet:
            # Say why, as a good wallet does: the verifier otherwise only learns "abandoned".
            text = ", ".join(f"{p['name']} {p['p_type']} {p['p_value']}" for p in unmet)
            await self.ctx.admin.problem_report(pres_ex_id, f"predicate not satisfied: {text}")
            return {"pres_ex_id": pres_ex_id, "state": "declined", "reason": f"predicate not satisfied: {text}"}
        presentation = {
            "requested_attributes": {r: {"cred_id": chosen["referent"], "revealed": True}
                                     for r in request.get("requested_attributes", {})},
            "requested_predicates": {r: {"cred_id": chosen["referent"]}
                                     for r in request.get("requested_predicates", {})},
            "self_attested_attributes": {},
        }
        try:
            await self.ctx.admin.send_presentation(pres_ex_id, presentation)
        except AdminApiError as exc:
            LOG.warning("could not present %s: %s", pres_ex_id, exc.reason)
            await self.ctx.admin.problem_report(pres_ex_id, f"the wallet could not create the presentation: "
                                                            f"{exc.reason}")
            return {"pres_ex_id": pres_ex_id, "state": "declined", "reason": exc.reason}
        return {"pres_ex_id": pres_ex_id, "state": "presentation-sent", "credential_id": chosen["referent"]}

    @staticmethod
    def _invitation_id(record: dict) -> str:
        pres_request = record.get("pres_request") or {}
        return (pres_request.get("~thread") or {}).get("pthid", "")

    async def credentials(self, prescription_id: str | None = None) -> list[HeldCredential]:
        wql = {"attr::prescription_id::value": prescription_id} if prescription_id else None
        # The token's secret key stays in the wallet: nothing that lists credentials needs it.
        return [HeldCredential(credential_id=c["referent"], cred_def_id=c["cred_def_id"],
                               attributes={k: v for k, v in c["attrs"].items() if k != "token_secret_key"})
                for c in await self.ctx.admin.credentials(wql)]

    def routes(self) -> list[web.RouteDef]:
        async def status(_: web.Request) -> web.Response:
            return json_response({"role": "patient", "auto_respond": self.auto_respond})

        async def open_invitation(request: web.Request) -> web.Response:
            return json_response(await self.open_invitation(await parse_body(request, OpenInvitation)), status=201)

        async def share(request: web.Request) -> web.Response:
            """Choose the prescription to present when this connection next asks for one."""
            body = await parse_body(request, Share)
            self._chosen[request.match_info["connection_id"]] = body.credential_id
            return json_response({"connection_id": request.match_info["connection_id"], **body.model_dump()})

        async def credentials(request: web.Request) -> web.Response:
            return json_response(await self.credentials(request.query.get("prescription_id")))

        return [
            web.get("/api/status", status),
            web.post("/api/invitations", open_invitation),
            web.get("/api/credentials", credentials),
            web.post("/api/connections/{connection_id}/share", share),
        ]


_COMPARE = {">=": int.__ge__, ">": int.__gt__, "<=": int.__le__, "<": int.__lt__}


def _satisfies(attrs: dict[str, str], predicate: dict) -> bool:
    try:
        return _COMPARE[predicate["p_type"]](int(attrs[predicate["name"]]), int(predicate["p_value"]))
    except (KeyError, ValueError):
        return False
