"""The doctor's practice: connect a patient, issue a prescription, revoke it, list what was issued.

Issuing (each step recorded, so a crash leaves a record saying how far it got):
  1. a fresh one-time key pair (sk_presc, pk_presc); the record (`creating_token`, token `pending`);
  2. the token's create, keyed by pk_presc with the allowed redemptions and validity window, handed to
     the batcher (`erx_roles.doctor.tokens`: the creates of concurrent issuances go as one createBatch,
     journaled with the records before it is sent) and, at the same time, not waiting for its receipt,
  3. an AnonCreds credential offered to the patient, carrying the prescription and sk_presc (`offered`);
  4. `issued` once both happened: the wallet stored the credential (webhook) and the token is mined.
A create that fails after the offer went out withdraws the offer, or revokes the credential if the
wallet already stored it: the record ends `failed`. A create without a receipt yet is not a failure:
the housekeeping loop finishes it from the journal. The records keep the token address and revocation
ids, never sk_presc (the token address is all a create needs).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid

from pydantic import SecretStr

from erx_contracts.client import TokenSpec, TxResult, new_prescription_key
from erx_contracts.errors import ChainError, ChainUnavailable, ContractError, ReceiptTimeout
from erx_core.acapy_admin import AdminApiError, AgentUnreachable, CredExState
from erx_core.documents import paper_prescriptions_pdf
from erx_core.events import Handler, Payload
from erx_core.recovery import SetAside
from erx_core.webhooks import EventType
from erx_indy.ledger import IndyLedgerError
from erx_roles.connections import require_active_connection
from erx_roles.context import RoleContext
from erx_roles.doctor.models import (Channel, CredDefMeta, IssuedPrescription, PrescriptionState, PrescriptionView,
                                     TokenBatch, TokenState)
from erx_roles.doctor.tokens import TokenBatcher
from erx_roles.errors import Conflict, InvalidRequest, UpstreamRefused, not_found, unavailable
from erx_schemas.paper import TYP as PICKUP_TYP
from erx_schemas.paper import CodeMedication, CodePrescriber, CodeTherapy, CodeToken, PickupCode, pickup_code_text
from erx_schemas.prescription import Prescriber, Prescription, PrescriptionOrder, TherapyPart, TokenRef, therapy_problem

LOG = logging.getLogger("erx.doctor")
ISSUE_TOPIC = "issue_credential_v2_0"
# an issuance still at its token after this long will not go on: the controller lost the one-time key
REVOCATION_VISIBLE_S = 8.0  # how long a revoke waits for the pool to show the revocation it published
UNFINISHED_CREATE_AFTER_S = 90  # > the chain client's receipt timeout: no create of this process is still waiting
UNPRINTED_AFTER_S = 15 * 60  # a paper prescription not handed over by then is cancelled (> the page's 10 min)


class DoctorService:
    def __init__(self, ctx: RoleContext):
        self.ctx = ctx
        self.records = ctx.store.table("prescription", IssuedPrescription,
                                       indexed=("cred_ex_id", "state", "token_state", "therapy_id"))
        self.batches = ctx.store.table("token_batch", TokenBatch)  # create transactions, journaled before sending
        self.meta = ctx.store.table("meta", CredDefMeta)
        self.cred_def_id: str | None = None
        self.issuer_did: str | None = None
        self.needs_attention = SetAside()  # prescriptions start-up recovery could not settle
        self.tokens = TokenBatcher(ctx.chain, self._journal_batch)
        self._locks: dict[str, asyncio.Lock] = {}
        self._following: set[str] = set()  # prescriptions whose create this process is waiting for
        self._tasks: set[asyncio.Task] = set()
        self._changed: dict[str, asyncio.Event] = {}  # set when a record's state moves (wait_issued)

    def subscriptions(self) -> list[tuple[str, Handler]]:
        """The agent's events this service acts on (wired by `erx_roles.context.wire` at start-up)."""
        return [(ISSUE_TOPIC, self._on_issue_event)]

    @property
    def prescriber(self) -> Prescriber:
        return Prescriber(name=self.ctx.config.label, identifier=self.issuer_did or "")

    # -- onboarding -------------------------------------------------------------------------
    async def onboard(self, revocation_registry_size: int = 1000) -> str:
        """Public DID on the pool, a revocable credential definition over the national schema, and the
        issuer role on the token contract. Idempotent; returns the credential definition id."""
        public = await self.ctx.admin.public_did()
        if public is None:
            raise RuntimeError("the doctor's agent has no public DID: run `./erx up`, which registers it")
        self.issuer_did = public.did
        schema_id = self.ctx.config.prescription_schema_id
        meta = self.meta.get("cred_def")
        if meta is None or meta.schema_id != schema_id:
            cred_def_id = await self._find_cred_def(schema_id) or await self.ctx.admin.create_credential_definition(
                public.did, schema_id, tag="prescription", revocation_registry_size=revocation_registry_size)
            meta = self.meta.put("cred_def", CredDefMeta(cred_def_id=cred_def_id, schema_id=schema_id))
        self.cred_def_id = meta.cred_def_id
        if not await self.ctx.chain.is_issuer(self.ctx.chain.address):
            raise RuntimeError(f"chain account {self.ctx.chain.address} is not an onboarded issuer on the token "
                               "contract: the health authority must add it")
        return self.cred_def_id

    async def recover(self) -> list[str]:
        """At start-up: offers the wallet answered while this controller was down (its agent's webhooks
        went nowhere) are settled from the agent's exchange records, with their events."""
        settled = []
        for record in [r for r in self.records.find_all("state", PrescriptionState.OFFERED)
                       if r.cred_ex_id and not r.credential_stored]:
            await self.needs_attention.attempt(record.prescription_id, self._recover_offer(record), LOG)
            if self.get(record.prescription_id).state != PrescriptionState.OFFERED:
                settled.append(record.prescription_id)
        settled += await self.settle_unfinished_creates()
        return settled

    async def settle_unfinished_creates(self, now: float | None = None) -> list[str]:
        """Issuances that never got past their token (the controller died between the create and the
        offer, or the create's receipt never came) are settled from the chain once they are older than
        `UNFINISHED_CREATE_AFTER_S`: no offer was sent and the one-time key is gone, so a token that
        exists is cancelled (an unissued prescription must not stay redeemable) and the record fails;
        a token that never appeared fails too. Never a live token under a `failed` record."""
        now = time.time() if now is None else now
        settled = []
        resumed: dict[str, TxResult | BaseException] = {}
        for record in list(self.records.find_all("state", PrescriptionState.CREATING_TOKEN)):
            if now - record.created_at < UNFINISHED_CREATE_AFTER_S or record.prescription_id in self._following:
                continue
            async with self._lock(record.prescription_id):
                record = self.get(record.prescription_id)
                if record.state != PrescriptionState.CREATING_TOKEN:
                    continue
                if record.token_state == TokenState.PENDING and record.token_tx:
                    outcome = await self._resume(record.token_tx, resumed)
                    if _undecided(outcome):
                        continue  # it may still be mined: next round
                status = await self.ctx.chain.status(record.token_address)
                if status.exists and not status.cancelled:
                    await self.ctx.chain.cancel(record.token_address)
                record = self.get(record.prescription_id)
                record.token_state = TokenState.CREATED if status.exists else TokenState.FAILED
                self._fail(record, "the issuance did not complete (no offer was sent); "
                           + ("its token was cancelled" if status.exists else "no token was created")
                           + ": issue the prescription again")
            settled.append(record.prescription_id)
        return settled

    async def _recover_offer(self, record: IssuedPrescription) -> None:
        try:
            exchange = await self.ctx.admin.credential_exchange(record.cred_ex_id)
        except AgentUnreachable:
            raise
        except AdminApiError as exc:
            LOG.warning("prescription %s: offer %s not readable (%s)", record.prescription_id,
                        record.cred_ex_id, exc.reason)
            return
        await self._settle(record.prescription_id, exchange.state, exchange.error_msg)

    async def _find_cred_def(self, schema_id: str) -> str | None:
        ids = await self.ctx.admin.credential_definition_ids(schema_id, self.issuer_did)
        return ids[0] if ids else None

    # -- issuing -------------------------------------------------------------------------------
    async def issue(self, connection_id: str, order: PrescriptionOrder, prescriber: Prescriber | None = None,
                    therapy: TherapyPart | None = None) -> IssuedPrescription:
        """Issue one prescription (or one part of a therapy) to the patient's connected wallet. The
        credential names `prescriber` (default: the practice itself, for callers that are no person)."""
        if self.cred_def_id is None:
            raise Conflict("the practice is not onboarded yet")
        await require_active_connection(self.ctx, connection_id)
        return await self._issue(connection_id, await self._for_wallet(order, prescriber or self.prescriber, therapy))

    async def issue_therapy(self, connection_id: str, orders: list[PrescriptionOrder],
                            prescriber: Prescriber | None = None) -> list[IssuedPrescription]:
        """A therapy in parts: each part its own credential and token with its own window, all offered at
        once (their creates go in one batch). A part whose offer fails is recorded `failed` with the
        reason and the others go on: the therapy's view shows each part's state."""
        if (problem := therapy_problem(orders)) is not None:
            raise InvalidRequest(problem)
        if self.cred_def_id is None:
            raise Conflict("the practice is not onboarded yet")
        await require_active_connection(self.ctx, connection_id)
        therapy_id, count = str(uuid.uuid4()), len(orders)
        # every part made and signed before any is offered: a signing failure leaves no part behind
        prepared = [await self._for_wallet(order, prescriber or self.prescriber,
                                           TherapyPart(therapy_id=therapy_id, part=number, parts=count))
                    for number, order in enumerate(orders, start=1)]
        outcomes = await asyncio.gather(*(self._issue(connection_id, made) for made in prepared),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, UpstreamRefused):
                raise outcome
        return self.therapy(therapy_id)

    def therapy(self, therapy_id: str) -> list[IssuedPrescription]:
        """The parts of a therapy in part order (NotFound if there is no such therapy)."""
        parts = sorted(self.records.find_all("therapy_id", therapy_id), key=lambda r: r.part)
        if not parts:
            raise not_found(f"therapy {therapy_id}")
        return parts

    async def print_paper(self, orders: list[PrescriptionOrder], prescriber: Prescriber | None = None
                          ) -> tuple[list[IssuedPrescription], bytes]:
        """Paper prescriptions for a patient without a wallet: one order, or the parts of a therapy, and the
        PDF to print (a page each). Each token is mined before this returns (a page is only worth printing
        once its token exists); each pickup code is signed by the practice's DID key. The records are
        `printing` until `handed_over` is called: the PDF holds the one-time keys and is never stored, so
        a page that is never handed over (the answer lost, the process dead) has its token cancelled by the
        housekeeping loop (`cancel_unprinted`) instead of staying redeemable by nobody's paper."""
        printed = await self._issue_paper(orders, prescriber)
        pdf = await asyncio.to_thread(paper_prescriptions_pdf, [(code, text) for _, code, text in printed],
                                      signer_verkey=await self.signing_verkey())
        return [record for record, _, _ in printed], pdf

    async def handed_over(self, records: list[IssuedPrescription]) -> None:
        """The printout left the practice's controller: the paper prescriptions are `issued`."""
        for record in records:
            async with self._lock(record.prescription_id):
                current = self.get(record.prescription_id)
                if current.state == PrescriptionState.PRINTING:
                    current.state = PrescriptionState.ISSUED
                    self._commit(current, EventType.ISSUED)

    async def cancel_unprinted(self, now: float | None = None, after_s: float = UNPRINTED_AFTER_S) -> list[str]:
        """Paper prescriptions whose page was never handed over: their token is cancelled, the record fails."""
        now = time.time() if now is None else now
        cancelled = []
        for record in list(self.records.find_all("state", PrescriptionState.PRINTING)):
            if now - record.created_at >= after_s and record.prescription_id not in self._following:
                await self._unprint(record.prescription_id, "the printout was never handed over")
                cancelled.append(record.prescription_id)
        return cancelled

    async def _unprint(self, prescription_id: str, why: str) -> None:
        async with self._lock(prescription_id):
            record = self.get(prescription_id)
            if record.state != PrescriptionState.PRINTING:
                return
            status = await self.ctx.chain.status(record.token_address)
            if status.exists and not status.cancelled:
                await self.ctx.chain.cancel(record.token_address)
            self._fail(self.get(prescription_id), f"{why}: its token was cancelled; print it again")

    async def _issue_paper(self, orders: list[PrescriptionOrder], prescriber: Prescriber | None
                           ) -> list[tuple[IssuedPrescription, PickupCode, str]]:
        if self.cred_def_id is None or self.issuer_did is None:
            raise Conflict("the practice is not onboarded yet")
        if len(orders) > 1 and (problem := therapy_problem(orders)) is not None:
            raise InvalidRequest(problem)
        prescriber = prescriber or self.prescriber
        therapy_id = str(uuid.uuid4())
        parts = [TherapyPart(therapy_id=therapy_id, part=n, parts=len(orders)) if len(orders) > 1 else None
                 for n in range(1, len(orders) + 1)]
        made = [self._new_prescription(order, prescriber, part) for order, part in zip(orders, parts, strict=True)]
        codes = [await self._pickup_code(prescription, "paper") for prescription, _ in made]  # before any token
        records = [self._put(self._record_of(prescription, "", Channel.PAPER)) for prescription, _ in made]
        self._following.update(r.prescription_id for r in records)
        try:
            outcomes = await asyncio.gather(*(self.tokens.submit(r.prescription_id, spec)
                                              for r, (_, spec) in zip(records, made, strict=True)),
                                            return_exceptions=True)
            for record, outcome in zip(records, outcomes, strict=True):
                await self._token_outcome(record.prescription_id, outcome)  # created, failed, or left to the journal
                async with self._lock(record.prescription_id):
                    current = self.get(record.prescription_id)
                    if current.token_state == TokenState.CREATED and current.state == PrescriptionState.CREATING_TOKEN:
                        current.state = PrescriptionState.PRINTING
                        self._put(current)
        finally:
            self._following.difference_update(r.prescription_id for r in records)
        records = [self.get(r.prescription_id) for r in records]
        if all(r.state == PrescriptionState.PRINTING for r in records):
            return [(r, code, text) for r, (code, text) in zip(records, codes, strict=True)]
        # Not every token exists (yet): nothing is printed, and a part is no use without the others. What was
        # created is cancelled now; a create still unconfirmed is settled by the housekeeping loop.
        for record in records:
            if record.state == PrescriptionState.PRINTING:
                await self._unprint(record.prescription_id, "another part's token was not created")
            elif record.state == PrescriptionState.CREATING_TOKEN and record.token_state == TokenState.FAILED:
                async with self._lock(record.prescription_id):
                    current = self.get(record.prescription_id)
                    self._fail(current, f"{current.error}; nothing was printed")
        failed = sum(r.token_state != TokenState.CREATED for r in records)
        raise unavailable(f"{failed} of {len(records)} token(s) were not confirmed by the chain: nothing was printed, "
                          "and what was created is cancelled. Print again.")

    async def signing_verkey(self) -> str | None:
        """The verkey the ledger holds for the practice's DID (printed on paper, for whoever verifies by
        hand); None if the ledger does not answer now (the page is valid without it)."""
        try:
            return await self.ctx.admin.did_verkey(self.issuer_did or "")
        except AdminApiError:
            return None

    async def _pickup_code(self, prescription: Prescription, channel: str) -> tuple[PickupCode, str]:
        """The prescription signed by the practice's DID key (its text for a QR code or the credential)."""
        o, m, t = prescription.order, prescription.order.medication, prescription.therapy_part
        code = PickupCode(
            channel=channel, iss=self.issuer_did, prescription_id=prescription.prescription_id,
            issue_date=prescription.issue_date, patient_name=o.patient_name, patient_birth_date=o.patient_birth_date,
            medication=CodeMedication(name=m.name, code=m.code, code_system=m.code_system, strength=m.strength,
                                      form=m.form),
            dosage_instructions=o.dosage_instructions, quantity=o.quantity, substitution_allowed=o.substitution_allowed,
            redemptions=o.redemptions, valid_from=o.valid_from, valid_until=o.valid_until,
            prescriber=CodePrescriber(name=prescription.prescriber.name, identifier=prescription.prescriber.identifier),
            therapy=CodeTherapy(therapy_id=t.therapy_id, part=t.part, parts=t.parts) if t.parts > 1 else None,
            token=CodeToken(chain_id=prescription.token.chain_id, contract=prescription.token.contract,
                            secret_key=prescription.token.secret_key))
        jws = await self.ctx.admin.sign_jws(self.issuer_did, code.signing_payload(), typ=PICKUP_TYP)
        try:
            return code, pickup_code_text(jws)
        except ValueError as exc:  # too long for a QR code
            raise InvalidRequest(str(exc)) from None

    def _new_prescription(self, order: PrescriptionOrder, prescriber: Prescriber,
                          therapy: TherapyPart | None) -> tuple[Prescription, TokenSpec]:
        key = new_prescription_key()
        not_before, not_after = _validity_window(order)
        spec = TokenSpec(token=key.address, redemptions=order.redemptions, not_before=not_before, not_after=not_after)
        prescription = Prescription(
            prescription_id=str(uuid.uuid4()), order=order, prescriber=prescriber, therapy=therapy,
            token=TokenRef(chain_id=self.ctx.chain.config.chain_id, contract=self.ctx.chain.contract_address,
                           secret_key=SecretStr(key.private_key)))
        return prescription, spec

    @staticmethod
    def _record_of(prescription: Prescription, connection_id: str, channel: Channel) -> IssuedPrescription:
        therapy = prescription.therapy
        return IssuedPrescription(
            prescription_id=prescription.prescription_id, connection_id=connection_id, channel=channel,
            state=PrescriptionState.CREATING_TOKEN, order=prescription.order, prescriber=prescription.prescriber,
            therapy_id=therapy.therapy_id if therapy else None, part=therapy.part if therapy else 1,
            parts=therapy.parts if therapy else 1, token_address=prescription.token.address,
            token_state=TokenState.PENDING)

    async def _for_wallet(self, order: PrescriptionOrder, prescriber: Prescriber, therapy: TherapyPart | None
                          ) -> tuple[Prescription, TokenSpec]:
        """A new prescription with its key and token, carrying the wallet's copy of its pickup code (for a
        representative), signed before anything is recorded or sent."""
        prescription, spec = self._new_prescription(order, prescriber, therapy)
        prescription.pickup_code = (await self._pickup_code(prescription, "wallet"))[1]
        return prescription, spec

    async def _issue(self, connection_id: str, made: tuple[Prescription, TokenSpec]) -> IssuedPrescription:
        prescription, spec = made
        order, therapy, pid = prescription.order, prescription.therapy, prescription.prescription_id
        self._put(self._record_of(prescription, connection_id, Channel.WALLET))
        # The create and the offer go at once: the token's address is known from the key already, and a
        # credential whose token never comes to exist is refused by every pharmacy (`unknown token`).
        self._follow(pid, spec)
        try:
            exchange = await self.ctx.admin.send_offer(connection_id, self.cred_def_id, prescription.to_attributes(),
                                                       comment=_offer_comment(order, therapy))
        except AdminApiError as exc:
            async with self._lock(pid):  # its token, once created, is cancelled (`_token_created`)
                self._fail(self.get(pid), f"offer failed: {exc.reason}")
            raise UpstreamRefused(f"the agent refused the offer: {exc.reason}") from exc
        async with self._lock(pid):
            record = self.get(pid)
            record.cred_ex_id = exchange.cred_ex_id
            record.state = PrescriptionState.OFFERED
            self._commit(record, EventType.OFFERED)
        if record.token_state == TokenState.FAILED:  # the create failed while the offer went out
            await self._abort_logged(pid)
            return self.get(pid)
        # A quick wallet may have answered before the exchange id was on record: replay what came.
        for payload in self.ctx.bus.recent(ISSUE_TOPIC, lambda p: p["cred_ex_id"] == record.cred_ex_id):
            await self._on_issue_event(ISSUE_TOPIC, payload)
        return self.get(pid)

    # -- the token's create ------------------------------------------------------------------------
    async def _journal_batch(self, prescription_ids: list[str], tx_hash: str, raw_tx: str) -> None:
        """Before a create transaction is sent: its signed bytes, and its hash on each of its records.
        (No lock: it runs under the chain client's nonce lock. Whoever else writes a record re-reads it
        after each await, so this write is not lost.)"""
        with self.ctx.store.transaction():
            self.batches.put(tx_hash, TokenBatch(tx_hash=tx_hash, raw_tx=raw_tx, prescription_ids=prescription_ids))
            for pid in prescription_ids:
                if (record := self.records.get(pid)) is not None:
                    record.token_tx = tx_hash
                    self.records.put(pid, record)

    def _follow(self, pid: str, spec: TokenSpec) -> None:
        """Hand the create to the batcher and settle the record with its outcome, in the background."""
        self._following.add(pid)
        task = asyncio.create_task(self._await_token(pid, self.tokens.submit(pid, spec)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _await_token(self, pid: str, created: asyncio.Future[TxResult]) -> None:
        try:
            try:
                result: TxResult | BaseException = await created
            except ChainError as exc:
                result = exc
            await self._token_outcome(pid, result)
        except Exception:  # e.g. the agent is down for the withdrawal: the housekeeping loop goes on
            LOG.exception("prescription %s: settling its token failed; the housekeeping loop retries", pid)
        finally:
            self._following.discard(pid)

    async def _token_outcome(self, pid: str, outcome: TxResult | BaseException) -> None:
        if isinstance(outcome, TxResult):
            await self._token_created(pid, outcome.tx_hash)
        elif _undecided(outcome):  # sent, not confirmed: settled later from the journal and the chain
            async with self._lock(pid):
                record = self.get(pid)
                if record.token_state == TokenState.PENDING:
                    record.error = f"token creation not confirmed yet: {outcome}"
                    self._put(record)
            LOG.warning("prescription %s: token creation not confirmed yet: %s", pid, outcome)
        else:
            try:  # e.g. a resent batch that lost against itself: the chain says whether the token is there
                exists = (await self.ctx.chain.status(self.get(pid).token_address)).exists
            except ChainError:
                return  # unknown: the housekeeping loop asks again
            if exists:
                await self._token_created(pid, None)
            else:
                await self._token_failed(pid, outcome)

    async def _token_created(self, pid: str, tx_hash: str | None) -> None:
        async with self._lock(pid):
            record = self.get(pid)
            if record.token_state != TokenState.PENDING:
                return
            if record.state in (PrescriptionState.DECLINED, PrescriptionState.FAILED):
                # declined (or the offer failed) while the create was on its way: nobody may redeem it.
                # Recorded `created` only once cancelled, so a failed cancel is tried again.
                if not (await self.ctx.chain.status(record.token_address)).cancelled:
                    await self.ctx.chain.cancel(record.token_address)
                record = self.get(pid)
            record.token_state = TokenState.CREATED
            record.token_tx = tx_hash or record.token_tx
            if record.error and record.error.startswith("token creation not confirmed"):
                record.error = None
            if record.state == PrescriptionState.OFFERED and record.credential_stored:
                record.state = PrescriptionState.ISSUED
                self._commit(record, EventType.ISSUED)
                LOG.info("prescription %s: %s", pid, record.state)
            else:
                self._put(record)

    async def _token_failed(self, pid: str, exc: BaseException) -> None:
        async with self._lock(pid):
            record = self.get(pid)
            if record.token_state != TokenState.PENDING:
                return
            record.token_state, record.error = TokenState.FAILED, f"token creation failed: {exc}"
            self._put(record)
            LOG.warning("prescription %s (%s): token creation failed: %s", pid, record.state, exc)
            if record.state == PrescriptionState.OFFERED:  # (creating_token: `issue` withdraws it once sent)
                await self._abort(record)

    async def _abort_logged(self, pid: str) -> None:
        try:
            async with self._lock(pid):
                record = self.get(pid)
                if record.state == PrescriptionState.OFFERED and record.token_state == TokenState.FAILED:
                    await self._abort(record)
        except Exception:
            LOG.exception("prescription %s: its token failed and its offer is not withdrawn yet; retried later", pid)

    async def _abort(self, record: IssuedPrescription) -> None:
        """The token will never exist: the offer is withdrawn (a problem report), or, if the wallet has
        the credential already, the credential is revoked (the patient is told); the record fails, with
        the event (`declined` for a withdrawn offer, `revoked` for a revoked credential). Under the
        record's lock; resumable: an agent or pool that is down leaves it to the housekeeping loop."""
        pid, reason = record.prescription_id, record.error or "token creation failed"
        if not record.credential_stored:
            try:
                await self.ctx.admin.decline_offer(record.cred_ex_id, "the prescription could not be issued")
            except AgentUnreachable:
                raise
            except AdminApiError as exc:  # already answered, abandoned or forgotten
                LOG.info("prescription %s: problem report not sent: %s", pid, exc.reason)
            try:
                exchange = await self.ctx.admin.credential_exchange(record.cred_ex_id)
            except AgentUnreachable:
                raise
            except AdminApiError:
                exchange = None
            record = self.get(pid)
            if exchange is not None and exchange.cred_rev_id:  # issued before the report reached the agent
                record.rev_reg_id, record.cred_rev_id = exchange.rev_reg_id, exchange.cred_rev_id
                record.thread_id = exchange.thread_id or record.thread_id
                record.credential_stored = True
                self._put(record)
        if record.credential_stored:
            if not await self._revoked_on_ledger(record):
                await self._publish_revocation(record)
            reason = f"{reason}; the credential was revoked"
        else:
            reason = f"{reason}; the offer was withdrawn"
        event = EventType.FAILED
        record = self.get(pid)
        record.state, record.error = PrescriptionState.FAILED, reason
        self._commit(record, event)
        LOG.info("prescription %s: failed (%s)", pid, reason)
        await self._forget_exchange(record)

    async def _resume(self, tx_hash: str, cache: dict[str, TxResult | BaseException]) -> TxResult | BaseException:
        """The outcome of a journaled create (once per round for a batch shared by several records)."""
        if tx_hash not in cache:
            batch = self.batches.get(tx_hash)
            if batch is None:
                cache[tx_hash] = ChainUnavailable(f"transaction {tx_hash} is not journaled")
            else:
                try:
                    cache[tx_hash] = await self.ctx.chain.resume(batch.tx_hash, batch.raw_tx)
                except ChainError as exc:
                    cache[tx_hash] = exc
        return cache[tx_hash]

    async def settle_pending_tokens(self) -> list[str]:
        """Creates this process is not waiting for (their receipt timed out, or the controller restarted)
        are finished from the journal: `resume` says mined, reverted or dropped; one that was never
        journaled is sent now (only the token's address is needed, not the one-time key). A failure whose
        withdrawal or revocation did not finish is tried again."""
        settled = []
        resumed: dict[str, TxResult | BaseException] = {}
        for record in list(self.records.find_all("token_state", TokenState.PENDING)):
            pid = record.prescription_id
            if pid in self._following or record.state == PrescriptionState.CREATING_TOKEN:
                continue  # waited for here, or `settle_unfinished_creates`'
            if record.token_tx and self.batches.get(record.token_tx) is not None:
                outcome = await self._resume(record.token_tx, resumed)
                if _undecided(outcome):
                    continue
                await self._token_outcome(pid, outcome)
            elif record.state == PrescriptionState.OFFERED:
                not_before, not_after = _validity_window(record.order)
                self._follow(pid, TokenSpec(token=record.token_address, redemptions=record.order.redemptions,
                                            not_before=not_before, not_after=not_after))
                continue
            else:  # declined or failed before its create was sent: it never will be
                async with self._lock(pid):
                    record = self.get(pid)
                    if record.token_state == TokenState.PENDING and not record.token_tx:
                        record.token_state = TokenState.FAILED
                        self._put(record)
            if self.get(pid).token_state != TokenState.PENDING:
                settled.append(pid)
        for record in list(self.records.find_all("state", PrescriptionState.OFFERED)):
            if record.token_state == TokenState.FAILED and record.prescription_id not in self._following:
                await self._abort_logged(record.prescription_id)
                if self.get(record.prescription_id).state != PrescriptionState.OFFERED:
                    settled.append(record.prescription_id)
        return settled

    def _lock(self, prescription_id: str) -> asyncio.Lock:
        return self._locks.setdefault(prescription_id, asyncio.Lock())

    def _fail(self, record: IssuedPrescription, error: str) -> None:
        record.state, record.error = PrescriptionState.FAILED, error
        self._put(record)

    def _put(self, record: IssuedPrescription) -> IssuedPrescription:
        self.records.put(record.prescription_id, record)
        self._notify(record.prescription_id)
        return record

    def _notify(self, prescription_id: str) -> None:
        if (changed := self._changed.pop(prescription_id, None)) is not None:
            changed.set()

    def _commit(self, record: IssuedPrescription, event: EventType) -> IssuedPrescription:
        """Save a state change and its event for integrators together: neither without the other."""
        with self.ctx.store.transaction():
            self.records.put(record.prescription_id, record)
            self.ctx.outbox.record(event, {"prescription": record.model_dump(mode="json")})
        self._notify(record.prescription_id)
        return record

    def _by_exchange(self, cred_ex_id: str) -> IssuedPrescription | None:
        return self.records.find("cred_ex_id", cred_ex_id) if cred_ex_id else None

    async def _on_issue_event(self, topic: str, payload: Payload) -> None:
        record = self._by_exchange(payload.get("cred_ex_id", ""))
        if record is not None:
            await self._settle(record.prescription_id, payload.get("state"), payload.get("error_msg"))

    async def _settle(self, prescription_id: str, state: str | None, error_msg: str | None) -> None:
        """The one place an issue exchange's state moves a prescription: from the webhook, from the
        replay after `issue`, and from start-up recovery alike. Only an open offer moves; a stored
        credential makes it `issued` once its token is created too (`_token_created` otherwise)."""
        async with self._lock(prescription_id):
            record = self.get(prescription_id)
            if record.state not in (PrescriptionState.OFFERED, PrescriptionState.CREATING_TOKEN) \
                    or record.credential_stored:
                return
            if state == CredExState.DONE:  # the wallet acknowledged: it holds the credential
                exchange = await self.ctx.admin.credential_exchange(record.cred_ex_id)
                record = self.get(prescription_id)  # re-read: a create's journal may have written it meanwhile
                record.rev_reg_id, record.cred_rev_id = exchange.rev_reg_id, exchange.cred_rev_id
                record.thread_id = exchange.thread_id
                record.credential_stored = True
                if record.token_state == TokenState.CREATED:
                    record.state, event = PrescriptionState.ISSUED, EventType.ISSUED
                else:  # still `offered`: `issued` once the token is mined, revoked if it never is
                    self._put(record)
                    if record.token_state == TokenState.FAILED:
                        await self._abort(record)
                    event = None
            elif state in (CredExState.ABANDONED, CredExState.DECLINED, CredExState.DELETED):
                if record.token_state == TokenState.FAILED:  # withdrawn by `_abort`, or to be
                    return
                if record.token_state == TokenState.CREATED:
                    await self.ctx.chain.cancel(record.token_address)
                    record = self.get(prescription_id)
                # (a token still pending is cancelled as soon as it is created: `_token_created`)
                record.state, event = PrescriptionState.DECLINED, EventType.DECLINED
                record.error = error_msg or "the patient's wallet declined the offer"
            else:
                return
            if event is not None:
                self._commit(record, event)
                LOG.info("prescription %s: %s", record.prescription_id, record.state)
        # The exchange record holds the offer, and so the token's one-time key: the practice keeps
        # only the revocation ids and the thread, never the key.
        await self._forget_exchange(record)

    async def _forget_exchange(self, record: IssuedPrescription) -> None:
        try:
            await self.ctx.admin.delete_credential_exchange(record.cred_ex_id)
        except AdminApiError as exc:
            if exc.status != 404:
                LOG.warning("prescription %s: exchange %s not deleted: %s", record.prescription_id,
                            record.cred_ex_id, exc.reason)

    async def wait_issued(self, prescription_id: str, timeout_s: float) -> IssuedPrescription:
        """The record once it is no longer `offered` (issued, declined, failed), or as it is after `timeout_s`:
        `issued` needs both the wallet's acknowledgement and the token's create."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        record = self.get(prescription_id)
        while record.state == PrescriptionState.OFFERED and (left := deadline - loop.time()) > 0:
            changed = self._changed.setdefault(prescription_id, asyncio.Event())
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                break  # still offered: the patient has not accepted yet (or the token is not mined yet)
            record = self.get(prescription_id)
        return self.get(prescription_id)

    # -- revoking ---------------------------------------------------------------------------------
    async def revoke(self, prescription_id: str) -> IssuedPrescription:
        """Cancel the token first (effective at once, everywhere), then revoke the credential.

        Idempotent and resumable: each step is recorded before the next, so a revoke that failed
        half-way (the pool without quorum, the agent restarting) is finished by asking again, and a
        revoked prescription answers as it is."""
        async with self._lock(prescription_id):
            record = self.get(prescription_id)
            if record.state == PrescriptionState.REVOKED:
                return record
            if record.state != PrescriptionState.ISSUED:
                raise Conflict(f"prescription is {record.state}; only issued prescriptions can be revoked")
            if record.revoke_tx is None:
                status = await self.ctx.chain.status(record.token_address)
                if not status.cancelled and status.remaining > 0:  # a fully redeemed token cannot be cancelled
                    try:
                        record.revoke_tx = (await self.ctx.chain.cancel(record.token_address)).tx_hash
                    except ContractError as exc:
                        raise UpstreamRefused(f"the chain did not cancel the token: {exc}") from exc
                    self.records.put(prescription_id, record)
            # a paper prescription has no credential: its cancelled token is all there is to revoke
            if record.channel == Channel.WALLET and not await self._revoked_on_ledger(record):
                await self._publish_revocation(record)
            record.state = PrescriptionState.REVOKED
            return self._commit(record, EventType.REVOKED)

    async def _revoked_on_ledger(self, record: IssuedPrescription, wait_s: float = 0) -> bool:
        """Does the pool's registry mark this credential revoked? With `wait_s`, read again until it does:
        a read right after a write can reach a validator that has not committed it yet."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                revoked = int(record.cred_rev_id) in await self.ctx.ledger.revoked_indexes(record.rev_reg_id)
            except IndyLedgerError as exc:
                raise unavailable(f"the Indy network did not answer ({exc})") from None
            if revoked or time.monotonic() >= deadline:
                return revoked
            await asyncio.sleep(0.3)

    async def _publish_revocation(self, record: IssuedPrescription) -> None:
        """Revoke in the agent and publish; confirmed by reading the pool, because ACA-Py answers the
        revoke with 200 even when the ledger write failed (a pool without quorum). Asked again, the
        agent skips what its wallet already marks revoked, and the pool is read again: a write the
        surviving validators kept is ordered once quorum is back."""
        try:
            await self.ctx.admin.revoke(record.rev_reg_id, record.cred_rev_id,
                                        connection_id=record.connection_id, thread_id=record.thread_id)
        except AdminApiError as exc:
            LOG.warning("prescription %s: revocation not published: %s", record.prescription_id, exc.reason)
        else:
            if await self._revoked_on_ledger(record, wait_s=REVOCATION_VISIBLE_S):
                return
        raise unavailable("the credential's revocation is not on the ledger yet (the token is cancelled: no "
                          "pharmacy can redeem it)")

    # -- offers nobody takes -------------------------------------------------------------------------
    async def expire_stale_offers(self, now: float | None = None) -> list[str]:
        """An offer the wallet has not stored within `offers.unstored_after_s` ends `declined`: its token
        is cancelled (an unissued prescription must not stay redeemable) and its exchange, holding the
        one-time key, deleted."""
        now = time.time() if now is None else now
        after_s = self.ctx.config.offers.unstored_after_s
        expired = []
        for record in list(self.records.find_all("state", PrescriptionState.OFFERED)):
            # (a stored credential waits for its token; a failed token's offer is withdrawn by `_abort`)
            if now - record.created_at >= after_s and not record.credential_stored \
                    and record.token_state != TokenState.FAILED:
                await self._settle(record.prescription_id, CredExState.ABANDONED,
                                   f"the wallet did not store the credential within {after_s / 60:.0f} min")
                if self.get(record.prescription_id).state != PrescriptionState.OFFERED:
                    expired.append(record.prescription_id)
        return expired

    async def expire_stale_forever(self) -> None:
        """The doctor's housekeeping loop: no event announces that a wallet never answered."""
        interval = min(self.ctx.config.offers.unstored_after_s, 60) / 4
        while True:
            try:
                if expired := await self.expire_stale_offers():
                    LOG.info("%d offer(s) expired", len(expired))
                if failed := await self.settle_unfinished_creates():
                    LOG.info("%d unfinished issuance(s) settled from the chain", len(failed))
                if tokens := await self.settle_pending_tokens():
                    LOG.info("%d pending token create(s) settled from the journal", len(tokens))
                if unprinted := await self.cancel_unprinted():
                    LOG.info("%d paper prescription(s) never handed over: tokens cancelled", len(unprinted))
            except Exception:  # e.g. the chain is restarting: try again next round
                LOG.exception("expiring stale offers failed")
            await asyncio.sleep(interval)

    # -- listing -----------------------------------------------------------------------------------
    def get(self, prescription_id: str) -> IssuedPrescription:
        record = self.records.get(prescription_id)
        if record is None:
            raise not_found(f"prescription {prescription_id}")
        return record

    async def view(self, record: IssuedPrescription) -> PrescriptionView:
        """The record with its live token status; what the chain cannot tell now is shown as unknown."""
        try:
            status = await self.ctx.chain.status(record.token_address)
        except ChainError as exc:
            LOG.warning("prescription %s: token status unreadable: %s", record.prescription_id, exc)
            return PrescriptionView(**record.model_dump(), status=f"{record.state.value} (token status unknown)")
        label = record.state.value
        if record.state == PrescriptionState.ISSUED and record.revoke_tx:
            label = "revoking"
        elif record.state == PrescriptionState.ISSUED:
            used = record.order.redemptions - status.remaining
            if used:
                label = f"redeemed {used} of {record.order.redemptions}"
            if record.order.valid_until < dt.date.today() and status.remaining:
                label = "expired"
            elif record.order.valid_from > dt.date.today() and status.remaining:
                label = f"valid from {record.order.valid_from.isoformat()}"
        return PrescriptionView(**record.model_dump(), remaining_redemptions=status.remaining if status.exists
                                else None, token_cancelled=status.cancelled if status.exists else None, status=label)


def _undecided(outcome: TxResult | BaseException) -> bool:
    """A create whose outcome is not known yet: sent (or maybe sent) without a receipt so far."""
    return isinstance(outcome, ReceiptTimeout) or (isinstance(outcome, ChainUnavailable) and outcome.maybe_delivered)


def _offer_comment(order: PrescriptionOrder, therapy: TherapyPart | None) -> str:
    part = f" (part {therapy.part} of {therapy.parts}, from {order.valid_from.isoformat()})" \
        if therapy and therapy.parts > 1 else ""
    return f"Prescription: {order.medication.name}{part}"


def _validity_window(order: PrescriptionOrder) -> tuple[int, int]:
    """The token's window in unix seconds: from the start of valid_from to the end of valid_until (UTC)."""
    start = dt.datetime.combine(order.valid_from, dt.time.min, tzinfo=dt.UTC)
    end = dt.datetime.combine(order.valid_until, dt.time.max, tzinfo=dt.UTC)
    return int(start.timestamp()), int(end.timestamp())
