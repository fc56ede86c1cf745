"""The doctor's practice: connect a patient, issue a prescription, revoke it, list what was issued.

Issuing, in order (each step recorded before the next, so a crash leaves a record saying how far
it got):
  1. a fresh one-time key pair (sk_presc, pk_presc);
  2. a token on the chain keyed by pk_presc, with the allowed redemptions and validity window;
  3. an AnonCreds credential offered to the patient, carrying the prescription and sk_presc;
  4. the patient's wallet accepts: the credential is issued (webhook).
The doctor's records keep the token address and revocation ids, never sk_presc.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from enum import StrEnum

from aiohttp import web
from pydantic import BaseModel, Field, SecretStr

from erx_contracts.client import new_prescription_key
from erx_contracts.errors import ChainError
from erx_core.acapy_admin import AdminApiError
from erx_core.events import EventTimeout, Payload
from erx_roles.connections import connection_routes
from erx_roles.context import RoleContext
from erx_roles.http import ApiError, json_response, not_found, parse_body, wait_param
from erx_schemas.prescription import Prescriber, Prescription, PrescriptionOrder, TokenRef

LOG = logging.getLogger("erx.doctor")
ISSUE_TOPIC = "issue_credential_v2_0"


class PrescriptionState(StrEnum):
    CREATING_TOKEN = "creating_token"
    OFFERED = "offered"
    ISSUED = "issued"
    DECLINED = "declined"
    REVOKED = "revoked"
    FAILED = "failed"


class IssuedPrescription(BaseModel):
    """The practice's own record of a prescription (it is the practice's patient file, not the chain)."""

    prescription_id: str
    connection_id: str
    state: PrescriptionState
    order: PrescriptionOrder
    token_address: str
    token_tx: str | None = None
    cred_ex_id: str | None = None
    rev_reg_id: str | None = None
    cred_rev_id: str | None = None
    revoke_tx: str | None = None
    error: str | None = None
    created_at: float = Field(default_factory=time.time)


class PrescriptionView(IssuedPrescription):
    """A record with its live status from the chain."""

    remaining_redemptions: int | None = None
    token_cancelled: bool | None = None
    status: str


class IssueRequest(BaseModel):
    connection_id: str = Field(min_length=1)
    order: PrescriptionOrder


class DoctorService:
    def __init__(self, ctx: RoleContext):
        self.ctx = ctx
        self.records = ctx.store.table("prescription", IssuedPrescription)
        self.meta = ctx.store.table("meta", _Meta)
        self.cred_def_id: str | None = None
        self.issuer_did: str | None = None
        ctx.bus.subscribe(ISSUE_TOPIC, self._on_issue_event)

    @property
    def prescriber(self) -> Prescriber:
        return Prescriber(name=self.ctx.agent.label, identifier=self.issuer_did or "")

    # -- onboarding -------------------------------------------------------------------------
    async def onboard(self, revocation_registry_size: int = 1000) -> str:
        """Public DID on the pool, a revocable credential definition over the national schema, and the
        issuer role on the token contract. Idempotent; returns the credential definition id."""
        public = await self.ctx.admin.public_did()
        if public is None:
            raise RuntimeError("the doctor's agent has no public DID: run `./erx up`, which registers it")
        self.issuer_did = public.did
        schema_id = self.ctx.network.prescription_schema_id
        meta = self.meta.get("cred_def")
        if meta is None or meta.schema_id != schema_id:
            cred_def_id = await self._find_cred_def(schema_id) or await self.ctx.admin.create_credential_definition(
                public.did, schema_id, tag="prescription", revocation_registry_size=revocation_registry_size)
            meta = self.meta.put("cred_def", _Meta(cred_def_id=cred_def_id, schema_id=schema_id))
        self.cred_def_id = meta.cred_def_id
        if not await self.ctx.chain.is_issuer(self.ctx.chain.address):
            raise RuntimeError(f"chain account {self.ctx.chain.address} is not an onboarded issuer on the token "
                               "contract: the health authority must add it")
        return self.cred_def_id

    async def _find_cred_def(self, schema_id: str) -> str | None:
        found = await self.ctx.admin.get("/anoncreds/credential-definitions", schema_id=schema_id,
                                         issuer_id=self.issuer_did)
        ids = found.get("credential_definition_ids") or []
        return ids[0] if ids else None

    # -- issuing -------------------------------------------------------------------------------
    async def issue(self, connection_id: str, order: PrescriptionOrder) -> IssuedPrescription:
        if self.cred_def_id is None:
            raise ApiError(409, "the practice is not onboarded yet")
        await self._require_active_connection(connection_id)
        key = new_prescription_key()
        pid = str(uuid.uuid4())
        record = self.records.put(pid, IssuedPrescription(
            prescription_id=pid, connection_id=connection_id, state=PrescriptionState.CREATING_TOKEN, order=order,
            token_address=key.address))
        not_before, not_after = _validity_window(order)
        try:
            tx = await self.ctx.chain.create(key.address, redemptions=order.redemptions,
                                             not_before=not_before, not_after=not_after)
        except ChainError as exc:
            self._fail(record, f"token creation failed: {exc}")
            raise ApiError(502, f"the chain refused the token: {exc}") from exc
        record.token_tx = tx.tx_hash
        prescription = Prescription(
            prescription_id=pid, order=order, prescriber=self.prescriber,
            token=TokenRef(chain_id=self.ctx.chain.config.chain_id, contract=self.ctx.chain.contract_address,
                           secret_key=SecretStr(key.private_key)))
        try:
            exchange = await self.ctx.admin.send_offer(connection_id, self.cred_def_id, prescription.to_attributes(),
                                                       comment=f"Prescription: {order.medication.name}")
        except AdminApiError as exc:
            await self.ctx.chain.cancel(key.address)  # an unissued prescription must not stay redeemable
            self._fail(record, f"offer failed: {exc.reason}")
            raise ApiError(502, f"the agent refused the offer: {exc.reason}") from exc
        record.cred_ex_id = exchange["cred_ex_id"]
        record.state = PrescriptionState.OFFERED
        return self.records.put(pid, record)

    async def _require_active_connection(self, connection_id: str) -> None:
        try:
            conn = await self.ctx.admin.connection(connection_id)
        except AdminApiError as exc:
            if exc.status in (404, 400):
                raise ApiError(404, f"no connection {connection_id}") from None
            raise
        if conn.get("state") not in ("active", "completed"):
            raise ApiError(409, f"connection {connection_id} is {conn.get('state')}, not active")

    def _fail(self, record: IssuedPrescription, error: str) -> None:
        record.state, record.error = PrescriptionState.FAILED, error
        self.records.put(record.prescription_id, record)

    def _by_exchange(self, cred_ex_id: str) -> IssuedPrescription | None:
        return next((r for r in self.records.all() if r.cred_ex_id == cred_ex_id), None)

    async def _on_issue_event(self, topic: str, payload: Payload) -> None:
        record = self._by_exchange(payload.get("cred_ex_id", ""))
        if record is None or record.state not in (PrescriptionState.OFFERED, PrescriptionState.CREATING_TOKEN):
            return
        state = payload.get("state")
        if state == "done":  # the wallet acknowledged: it holds the credential
            details = await self.ctx.admin.get(f"/issue-credential-2.0/records/{record.cred_ex_id}")
            anon = details.get("anoncreds") or {}
            record.rev_reg_id, record.cred_rev_id = anon.get("rev_reg_id"), anon.get("cred_rev_id")
            record.state = PrescriptionState.ISSUED
        elif state in ("abandoned", "declined", "deleted"):
            record.state = PrescriptionState.DECLINED
            record.error = payload.get("error_msg") or "the patient's wallet declined the offer"
            await self.ctx.chain.cancel(record.token_address)
        else:
            return
        self.records.put(record.prescription_id, record)
        LOG.info("prescription %s: %s", record.prescription_id, record.state)

    async def wait_issued(self, prescription_id: str, timeout_s: float) -> IssuedPrescription:
        record = self._get(prescription_id)
        if record.state == PrescriptionState.OFFERED:
            waiter = self.ctx.bus.expect(ISSUE_TOPIC, lambda p: p["cred_ex_id"] == record.cred_ex_id
                                         and p["state"] in ("done", "abandoned", "declined"),
                                         include_recent=True)
            try:
                await waiter.wait(timeout_s)
            except EventTimeout:
                pass  # still offered: the patient has not accepted yet
        return self._get(prescription_id)

    # -- revoking ---------------------------------------------------------------------------------
    async def revoke(self, prescription_id: str) -> IssuedPrescription:
        """Cancel the token first (effective at once, everywhere), then revoke the credential."""
        record = self._get(prescription_id)
        if record.state == PrescriptionState.REVOKED:
            return record
        if record.state != PrescriptionState.ISSUED:
            raise ApiError(409, f"prescription is {record.state}; only issued prescriptions can be revoked")
        status = await self.ctx.chain.status(record.token_address)
        if not status.cancelled and status.remaining > 0:  # a fully redeemed token cannot be cancelled
            try:
                record.revoke_tx = (await self.ctx.chain.cancel(record.token_address)).tx_hash
            except ChainError as exc:
                raise ApiError(502, f"the chain did not cancel the token: {exc}") from exc
            self.records.put(prescription_id, record)
        details = await self.ctx.admin.get(f"/issue-credential-2.0/records/{record.cred_ex_id}")
        thread_id = details.get("cred_ex_record", {}).get("thread_id")
        await self.ctx.admin.revoke(record.rev_reg_id, record.cred_rev_id, connection_id=record.connection_id,
                                    thread_id=thread_id)
        record.state = PrescriptionState.REVOKED
        return self.records.put(prescription_id, record)

    # -- listing -----------------------------------------------------------------------------------
    def _get(self, prescription_id: str) -> IssuedPrescription:
        record = self.records.get(prescription_id)
        if record is None:
            raise not_found(f"prescription {prescription_id}")
        return record

    async def view(self, record: IssuedPrescription) -> PrescriptionView:
        status = await self.ctx.chain.status(record.token_address)
        label = record.state.value
        if record.state == PrescriptionState.ISSUED:
            used = record.order.redemptions - status.remaining
            if used:
                label = f"redeemed {used} of {record.order.redemptions}"
            if record.order.valid_until < dt.date.today() and status.remaining:
                label = "expired"
        return PrescriptionView(**record.model_dump(), remaining_redemptions=status.remaining if status.exists
                                else None, token_cancelled=status.cancelled if status.exists else None, status=label)

    # -- HTTP API ------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        async def status(_: web.Request) -> web.Response:
            return json_response({"role": "doctor", "cred_def_id": self.cred_def_id, "issuer_did": self.issuer_did,
                                  "schema_id": self.ctx.network.prescription_schema_id,
                                  "chain_account": self.ctx.chain.address})

        async def issue(request: web.Request) -> web.Response:
            body = await parse_body(request, IssueRequest)
            record = await self.issue(body.connection_id, body.order)
            return json_response(await self.view(record), status=201)

        async def list_all(_: web.Request) -> web.Response:
            return json_response([await self.view(r) for r in self.records.all()])

        async def one(request: web.Request) -> web.Response:
            pid, wait = request.match_info["prescription_id"], wait_param(request)
            record = await self.wait_issued(pid, wait) if wait else self._get(pid)
            return json_response(await self.view(record))

        async def revoke(request: web.Request) -> web.Response:
            return json_response(await self.view(await self.revoke(request.match_info["prescription_id"])))

        return [
            web.get("/api/status", status),
            *connection_routes(self.ctx, alias="patient"),
            web.post("/api/prescriptions", issue),
            web.get("/api/prescriptions", list_all),
            web.get("/api/prescriptions/{prescription_id}", one),
            web.post("/api/prescriptions/{prescription_id}/revoke", revoke),
        ]


class _Meta(BaseModel):
    cred_def_id: str
    schema_id: str


def _validity_window(order: PrescriptionOrder) -> tuple[int, int]:
    """The token's window in unix seconds: from the start of valid_from to the end of valid_until (UTC)."""
    start = dt.datetime.combine(order.valid_from, dt.time.min, tzinfo=dt.UTC)
    end = dt.datetime.combine(order.valid_until, dt.time.max, tzinfo=dt.UTC)
    return int(start.timestamp()), int(end.timestamp())
