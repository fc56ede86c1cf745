"""The pharmacy: ask for a prescription, check it, dispense by spending its token.

A check moves through:  requested → verified (ready to dispense) → dispensing → dispensed
                                   ↘ refused (one reason)        ↘ refused (one reason)
The refusal reasons are `erx_schemas.prescription.RefusalReason`. The pharmacist dispenses
explicitly (the medication is handed over); the token is spent then, not at verification.

Crash safety: the signed spend transaction is written to the check record *before* it is sent.
On restart, every check left in `dispensing` is finished from that record: the same transaction is
sent again (the chain accepts it at most once) and its receipt decides the outcome. So a crash
neither loses a dispense nor spends twice.

The one-time secret key is never stored by the controller: it is read from the agent's
presentation record when needed, and that record is deleted once the check is final.

A dispense may hand over a generic or another pack size, within the rules of
`erx_roles.dispensing.substitution_problem`. Once the spend is recorded, the pharmacy signs a receipt (the
FHIR MedicationDispense with the spend's hash, erx_schemas.receipt) with its DID key, announces the dispense
with it, and sends it to the patient's wallet over the check's connection; what fails of that is retried by
the housekeeping loop (`after_dispense`), never failing the dispense (docs/paper-and-receipts.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from typing import Any

from pydantic import SecretStr

from erx_contracts.errors import (AlreadySpent, BadSignature, Cancelled, ChainError, Expired, NotYetValid,
                                  StaleSignature, TransactionDropped, UnknownToken)
from erx_core.acapy_admin import AdminApiError, AgentUnreachable, PresentationExchange, PresExState
from erx_core.events import Handler, Payload
from erx_core.recovery import SetAside
from erx_core.webhooks import EventType
from erx_roles.connections import require_active_connection
from erx_roles.context import RoleContext
from erx_roles.dispensing import (ChainFacts, Override, Presented, abandoned, decide, examine, issuer_did, pickup_refusal,
                                  revealed_from_pickup, shown, trusted)
from erx_roles.dispensing import Substitution, as_dispensed, substitution_problem
from erx_roles.errors import Conflict, DomainError, InvalidRequest, not_found, unavailable
from erx_roles.pharmacy.models import (AfterDispense, Channel, CheckState, ReceiptView, StoredCheck, TrustedPrescriber,
                                       VerifiedReceipt, public)
from erx_roles.receipts import MESSAGE_PREFIX, VerkeyCache, check_receipt, own_receipt
from erx_schemas.paper import open_pickup_code, parse_pickup_code, pickup_signer
from erx_core.documents import receipt_pdf
from erx_schemas import receipt as receipts
from erx_schemas.fhir import medication_dispense
from erx_schemas.prescription import (PresentedPrescription, Refusal, RefusalReason, RevealedPrescription,
                                      dispensing_proof_request)

LOG = logging.getLogger("erx.pharmacy")
PROOF_TOPIC = "present_proof_v2_0"
RESETTLE_EVERY_S = 15.0  # how soon a check a transient fault interrupted is settled again
SIGN_TIMEOUT_S = 10.0  # a receipt the agent has not signed by then is signed by the housekeeping loop


class PharmacyService:
    def __init__(self, ctx: RoleContext):
        self.ctx = ctx
        self.checks = ctx.store.table("check", StoredCheck, indexed=("pres_ex_id", "state", "after_dispense"))
        self.limits = ctx.config.checks
        self.trusted = ctx.store.table("trusted", TrustedPrescriber)
        self._locks: dict[str, asyncio.Lock] = {}
        self._did: str | None = None
        self.needs_attention = SetAside()  # checks start-up recovery could not settle
        # for verifying receipts, anyone's: the public endpoint must not make every request a ledger read
        self._ledger_verkey = VerkeyCache(lambda did: self.ctx.admin.did_verkey(did))
        # a pickup code's one-time key, held in memory only from its check to the dispense: after a restart
        # the paper is scanned again (a journaled spend needs no key to finish)
        self._pickup_keys: dict[str, SecretStr] = {}

    def subscriptions(self) -> list[tuple[str, Handler]]:
        """The agent's events this service acts on (wired by `erx_roles.context.wire` at start-up)."""
        return [(PROOF_TOPIC, self._on_proof_event)]

    def _lock(self, check_id: str) -> asyncio.Lock:
        return self._locks.setdefault(check_id, asyncio.Lock())

    def _save(self, check: StoredCheck, event: EventType | None = None, **data: Any) -> StoredCheck:
        """Save a check; with `event`, its event for integrators is committed in the same transaction."""
        check.updated_at = time.time()
        with self.ctx.store.transaction():
            self.checks.put(check.check_id, check)
            if event is not None:
                self.ctx.outbox.record(event, {"check": public(check).model_dump(mode="json"), **data})
        return check

    def get(self, check_id: str) -> StoredCheck:
        check = self.checks.get(check_id)
        if check is None:
            raise not_found(f"check {check_id}")
        return check

    # -- start-up: finish what a crash interrupted --------------------------------------------------
    async def recover(self) -> list[str]:
        """Finish dispenses a crash interrupted, and settle checks whose presentation arrived (or was
        abandoned) while this controller was down. Returns the ids of the checks it finished.

        One record that cannot be settled is set aside (logged, listed in `needs_attention` and on
        `./erx status`), never allowed to stop the controller."""
        finished = []
        for check in list(self.checks.find_all("state", CheckState.DISPENSING)):
            if await self.needs_attention.attempt(check.check_id, self._recover_spend(check), LOG):
                finished.append(check.check_id)
        for check in list(self.checks.find_all("state", CheckState.REQUESTED)):
            if await self.needs_attention.attempt(check.check_id, self._recover_request(check), LOG):
                finished.append(check.check_id)
        # dispensed, but its event not recorded yet (stopped while the receipt was being signed)
        for check in list(self.checks.find_all("after_dispense", AfterDispense.ANNOUNCE)):
            if await self.needs_attention.attempt(check.check_id, self._resume_after_dispense(check.check_id), LOG):
                finished.append(check.check_id)
        return finished

    async def _recover_spend(self, check: StoredCheck) -> None:
        async with self._lock(check.check_id):
            check = self.get(check.check_id)
            if check.state == CheckState.DISPENSING:
                await self._finish_spend(check)

    async def _recover_request(self, check: StoredCheck) -> None:
        await self._settle(check.check_id, None)

    # -- checks nobody finishes --------------------------------------------------------------------
    async def expire_stale(self, now: float | None = None) -> list[str]:
        """End checks left open too long: unanswered requests, and verified prescriptions never
        dispensed (their presentation, holding the token key, is then deleted from the agent).
        Nothing is spent: the patient's prescription stays valid."""
        now = time.time() if now is None else now
        limits = {CheckState.REQUESTED: ("created_at", self.limits.unanswered_after_s, "unanswered"),
                  CheckState.VERIFIED: ("updated_at", self.limits.undispensed_after_s, "verified but not dispensed")}
        expired = []
        for state, (since, after_s, what) in limits.items():
            for check in list(self.checks.find_all("state", state)):
                if now - getattr(check, since) < after_s:
                    continue
                async with self._lock(check.check_id):
                    check = self.get(check.check_id)
                    if check.state == state:
                        await self._refuse(check, RefusalReason.TIMED_OUT, f"{what} for {after_s / 60:.0f} min")
                        expired.append(check.check_id)
        return expired

    async def expire_stale_forever(self) -> None:
        """The housekeeping loop the controller runs: a timer, since no event announces a timeout.
        It also settles again what a transient fault interrupted (the chain or agent down when a
        presentation arrived), so such a check ends by its facts, not by a timeout."""
        interval = min(self.limits.unanswered_after_s, self.limits.undispensed_after_s, 240) / 4
        while True:
            await asyncio.sleep(min(interval, RESETTLE_EVERY_S))
            try:
                for check in list(self.checks.find_all("state", CheckState.REQUESTED)):
                    try:
                        await self._recover_request(check)
                    except (AdminApiError, ChainError) as exc:  # still down: next round
                        LOG.warning("check %s not settled yet: %s", check.check_id, exc)
                for check in list(self.checks.find_all("state", CheckState.DISPENSING)):
                    if self._lock(check.check_id).locked():
                        continue  # a dispense is under way
                    try:
                        await self._recover_spend(check)
                    except (AdminApiError, ChainError, DomainError) as exc:
                        LOG.warning("check %s: spend not finished yet: %s", check.check_id, exc)
                if expired := await self.expire_stale():
                    LOG.info("%d check(s) timed out", len(expired))
                # receipts not signed or not delivered yet, events not recorded yet (failures are logged there);
                # last, so that a slow agent delays no spend's recovery and no expiry
                for step in AfterDispense:
                    for check in list(self.checks.find_all("after_dispense", step)):
                        if not self._lock(check.check_id).locked():
                            await self._resume_after_dispense(check.check_id)
            except Exception:  # e.g. the agent is restarting: try again next round
                LOG.exception("housekeeping of checks failed")

    # -- asking for a prescription ----------------------------------------------------------------
    def proof_request(self) -> dict:
        return dispensing_proof_request(self.ctx.config.prescription_schema_id)

    async def request(self, connection_id: str | None) -> StoredCheck:
        if connection_id:
            await require_active_connection(self.ctx, connection_id)
            exchange = await self.ctx.admin.send_proof_request(connection_id, self.proof_request())
            check = StoredCheck(check_id=str(uuid.uuid4()), pres_ex_id=exchange.pres_ex_id,
                                connection_id=connection_id)
        else:
            exchange = await self.ctx.admin.create_proof_request(self.proof_request())
            invitation = await self.ctx.admin.create_invitation(
                handshake=False, attachments=[{"id": exchange.pres_ex_id, "type": "present-proof"}])
            check_id = str(uuid.uuid4())
            link = self.ctx.links.create(check_id, invitation.invitation_url)
            check = StoredCheck(check_id=check_id, pres_ex_id=exchange.pres_ex_id,
                                invitation_url=invitation.invitation_url, **self.ctx.links.qr_links(link).model_dump())
        return self._save(check)

    async def check_pickup_code(self, text: str) -> StoredCheck:
        """A paper prescription's (or a representative's) pickup code: the practice's signature against its
        DID's verkey on the Indy network, the practice on the register of prescribers, then the token, as
        for a presentation. Text that is no pickup code at all is an InvalidRequest; a code that fails a
        check is a `refused` check naming the reason (and shows nothing of what it claims)."""
        try:
            jws = parse_pickup_code(text)
            signer = pickup_signer(jws)
        except ValueError as exc:  # SignatureInvalid is a ValueError: not a signed pickup code at all
            raise InvalidRequest(f"not a pickup code: {exc}") from None
        check = StoredCheck(check_id=str(uuid.uuid4()), pres_ex_id="", channel=Channel.PAPER)
        try:
            verkey = await self.ctx.admin.did_verkey(signer)
        except AdminApiError as exc:
            if isinstance(exc, AgentUnreachable) or exc.status >= 500:
                raise
            await self._refuse(check, RefusalReason.UNTRUSTED_ISSUER, f"the signer {signer} is not on the Indy network")
            return check
        try:
            code = open_pickup_code(jws, verkey)
        except ValueError as exc:  # a forged, edited or re-signed code
            await self._refuse(check, RefusalReason.INVALID_PRESENTATION, f"the practice's signature does not hold: {exc}")
            return check
        prescription = revealed_from_pickup(code)
        chain, registered = await asyncio.gather(self._chain_facts(prescription),
                                                 self.ctx.chain.is_trusted_prescriber(code.iss))
        check.channel = Channel.REPRESENTATIVE if code.channel == "wallet" else Channel.PAPER
        refusal = pickup_refusal(code, self._did_trusted(code.iss, registered), chain)
        if refusal is None or refusal.reason not in (RefusalReason.UNTRUSTED_ISSUER,):
            check.prescription = prescription.model_dump(mode="json", exclude={"token"})
            check.token_address = prescription.token.address
        if refusal is not None:
            await self._refuse(check, refusal.reason, refusal.detail)
            return check
        check.state = CheckState.VERIFIED
        check.remaining_redemptions = chain.status.remaining
        self._pickup_keys[check.check_id] = prescription.token.secret_key
        self._save(check, EventType.PRESENTED)
        LOG.info("check %s: %s pickup code verified", check.check_id, check.channel)
        return check

    def _did_trusted(self, did: str, registered: bool) -> bool:
        """The register's word for a DID, unless this pharmacy overrides one of its credential definitions."""
        overrides = [o.decision for o in self.trusted.all() if issuer_did(o.cred_def_id) == did]
        return trusted(Override.DENY if Override.DENY in overrides else (overrides[0] if overrides else None),
                       registered)

    def _by_exchange(self, pres_ex_id: str) -> StoredCheck | None:
        return self.checks.find("pres_ex_id", pres_ex_id) if pres_ex_id else None

    async def _on_proof_event(self, topic: str, payload: Payload) -> None:
        check = self._by_exchange(payload.get("pres_ex_id", ""))
        if check is not None:
            await self._settle(check.check_id, PresentationExchange.model_validate(payload))

    async def _settle(self, check_id: str, exchange: PresentationExchange | None) -> None:
        """The one place an agent's presentation exchange state moves a check: from the webhook and
        from start-up recovery and housekeeping alike (these pass None: the exchange is read here,
        under the check's lock, so it is never a stale read). Only a check still `requested` moves."""
        async with self._lock(check_id):
            check = self.get(check_id)
            if check.state != CheckState.REQUESTED:
                return
            if exchange is None:
                try:
                    exchange = await self.ctx.admin.presentation_exchange(check.pres_ex_id)
                except AgentUnreachable:
                    raise
                except AdminApiError:
                    return  # an unanswered request the agent has cleaned up: left to time out
            if exchange.state == PresExState.PRESENTATION_RECEIVED:
                await self._verify(check)
            elif exchange.state == PresExState.DONE and exchange.verified is not None:
                # verified before a crash or a transient fault: decide from the agent's full record (a
                # webhook's payload does not carry the presentation itself)
                await self._verify(check, verified=await self.ctx.admin.presentation_exchange(check.pres_ex_id))
            elif exchange.state == PresExState.ABANDONED:
                refusal = abandoned(exchange.error_msg)
                await self._refuse(check, refusal.reason, refusal.detail)

    # -- checking ------------------------------------------------------------------------------------
    async def _verify(self, check: StoredCheck, verified: PresentationExchange | None = None) -> None:
        """Verify, then decide (`erx_roles.dispensing`): the facts are fetched here, judged there."""
        record = verified
        if record is None:
            try:
                record = await self.ctx.admin.verify_presentation(check.pres_ex_id)
            except AdminApiError as exc:
                if isinstance(exc, AgentUnreachable) or exc.status >= 500:
                    raise  # transient (agent restarting, ledger unreachable): settled again later
                record = await self.ctx.admin.presentation_exchange(check.pres_ex_id)
                if record.state != PresExState.DONE or record.verified is None:
                    await self._refuse(check, RefusalReason.INVALID_PRESENTATION, exc.reason)
                    return
                # verified already (by an attempt a transient fault interrupted): decide from that record
        presented = examine(record.request, record.presentation, record.verified,
                            self.ctx.config.prescription_schema_id)
        chain, registered = None, False
        if isinstance(presented, Presented):
            chain, registered = await asyncio.gather(self._chain_facts(presented.prescription),
                                                     self._registered(presented.identifiers.cred_def_id))
        refusal = decide(presented, lambda cred_def_id: self._is_trusted(cred_def_id, registered), chain,
                         "; ".join(record.verified_msgs or []))
        if shown(presented, refusal):
            check.prescription = presented.prescription.model_dump(mode="json", exclude={"token"})
            check.cred_def_id = presented.identifiers.cred_def_id
            check.token_address = presented.prescription.token.address
        if refusal is not None:
            await self._refuse(check, refusal.reason, refusal.detail)
            return
        check.state = CheckState.VERIFIED
        check.remaining_redemptions = chain.status.remaining
        self._save(check, EventType.PRESENTED)

    async def _chain_facts(self, prescription: RevealedPrescription) -> ChainFacts:
        if not self._our_chain(prescription):
            return ChainFacts(on_our_chain=False, status=None, now=None)
        status, now = await asyncio.gather(self.ctx.chain.status(prescription.token.address),
                                           self.ctx.chain.chain_time())
        return ChainFacts(on_our_chain=True, status=status, now=now)

    def trust(self, prescriber: TrustedPrescriber) -> TrustedPrescriber:
        return self.trusted.put(prescriber.cred_def_id, prescriber)

    def distrust(self, cred_def_id: str) -> None:
        """NotFound for a prescriber not on the list."""
        if self.trusted.get(cred_def_id) is None:
            raise not_found(f"trusted prescriber {cred_def_id}")
        self.trusted.delete(cred_def_id)

    async def _registered(self, cred_def_id: str) -> bool:
        """Is the credential definition's issuer on the national register of prescribers (on chain)?"""
        return await self.ctx.chain.is_trusted_prescriber(issuer_did(cred_def_id))

    def _is_trusted(self, cred_def_id: str | None, registered: bool) -> bool:
        if cred_def_id is None:
            return False
        override = self.trusted.get(cred_def_id)
        return trusted(override.decision if override is not None else None, registered)

    def _our_chain(self, prescription: RevealedPrescription) -> bool:
        chain = self.ctx.chain
        return (prescription.token.chain_id == chain.config.chain_id
                and prescription.token.contract.lower() == chain.contract_address.lower())

    async def _refuse(self, check: StoredCheck, reason: RefusalReason, detail: str = "") -> None:
        check.state, check.refusal = CheckState.REFUSED, Refusal(reason=reason, detail=detail)
        self._save(check, EventType.REFUSED, reason=reason.value)
        LOG.info("check %s refused: %s", check.check_id, reason)
        await self._forget_presentation(check)

    # -- dispensing -------------------------------------------------------------------------------------
    async def dispense(self, check_id: str, substitution: Substitution | None = None) -> StoredCheck:
        """Spend the token. Asking again after a 503 finishes the same dispense: a journaled spend is
        resumed (the chain accepts it at most once), an unsent one is sent. With `substitution`, what is
        handed over instead (a generic, another pack size), if the rules allow it
        (`erx_roles.dispensing.substitution_problem`; InvalidRequest naming the rule otherwise); a dispense
        under way keeps the substitution it began with."""
        async with self._lock(check_id):
            check = self.get(check_id)
            if check.state == CheckState.DISPENSING:
                await self._finish_spend(check)
                return self.get(check_id)
            if check.state != CheckState.VERIFIED:
                raise Conflict(f"check is {check.state}; only a verified prescription can be dispensed",
                               check=public(check).model_dump(mode="json"))
            check.substitution = self._allowed(check, substitution)
            check.state = CheckState.DISPENSING
            self._save(check)
            await self._spend(check)
            return self.get(check_id)

    @staticmethod
    def _allowed(check: StoredCheck, substitution: Substitution | None) -> Substitution | None:
        """The substitution as it will be recorded, or InvalidRequest with the rule it breaks."""
        if substitution is None:
            return None
        try:
            prescription = PresentedPrescription.model_validate(check.prescription or {})
        except ValueError:  # pydantic's ValidationError: a record without a readable prescription
            raise InvalidRequest("this check holds no prescription to substitute for") from None
        if problem := substitution_problem(prescription, substitution):
            raise InvalidRequest(f"substitution refused: {problem}", rule=problem)
        return as_dispensed(prescription, substitution)

    async def _spend(self, check: StoredCheck) -> None:
        try:
            secret_key = await self._secret_key(check)
        except AgentUnreachable:  # nothing was sent: the check is as it was, dispensable again
            check.state = CheckState.VERIFIED
            self._save(check)
            raise
        if secret_key is None:
            await self._refuse(check, RefusalReason.INVALID_PRESENTATION,
                               "the presentation is no longer available" if check.channel == Channel.WALLET else
                               "the pickup code is no longer held (the pharmacy's controller restarted): scan it again")
            return

        async def journal(tx_hash: str, raw_tx: str) -> None:
            check.spend_tx_hash, check.spend_raw_tx = tx_hash, raw_tx
            self._save(check)

        try:
            # the count read at verification: no second status read on the dispense path (a stale one is
            # refused by the contract's estimate and re-read)
            result = await self.ctx.chain.spend(secret_key, journal=journal,
                                                expected_remaining=check.remaining_redemptions)
        except ChainError as exc:
            await self._spend_failed(check, exc)
            return
        await self._dispensed(check, result.tx_hash)

    async def _finish_spend(self, check: StoredCheck) -> None:
        """After a crash: the journaled transaction decides; if none was journaled, spend now."""
        if check.spend_raw_tx is None:
            await self._spend(check)
            return
        try:
            result = await self.ctx.chain.resume(check.spend_tx_hash, check.spend_raw_tx)
        except TransactionDropped:
            check.spend_tx_hash = check.spend_raw_tx = None
            await self._spend(check)
            return
        except ChainError as exc:
            await self._spend_failed(check, exc)
            return
        await self._dispensed(check, result.tx_hash)

    async def _spend_failed(self, check: StoredCheck, exc: ChainError) -> None:
        reason = {AlreadySpent: RefusalReason.ALREADY_REDEEMED, StaleSignature: RefusalReason.ALREADY_REDEEMED,
                  Cancelled: RefusalReason.CANCELLED, UnknownToken: RefusalReason.UNKNOWN_TOKEN,
                  Expired: RefusalReason.EXPIRED, NotYetValid: RefusalReason.NOT_YET_VALID,
                  BadSignature: RefusalReason.INVALID_PRESENTATION}.get(type(exc))
        if reason is None:  # the chain is unreachable or similar: transient, never a verdict
            LOG.error("check %s: spend did not complete: %s", check.check_id, exc)
            if check.spend_raw_tx is None:  # nothing signed reached the chain: dispensable again
                check.state = CheckState.VERIFIED
                self._save(check)
            raise unavailable(f"the chain did not confirm the spend ({type(exc).__name__}); dispense again to "
                              "finish it — do not hand out the medication yet")
        await self._refuse(check, reason, str(exc))

    async def _dispensed(self, check: StoredCheck, tx_hash: str) -> None:
        """The spend is mined: record it, before anything else — nothing may make a mined dispense fail
        (the remaining count is derived, not read from the chain). Then what follows from it, each step best
        effort and left for the housekeeping loop when it fails (`after_dispense`, `_after_dispense`)."""
        check.state, check.spend_tx_hash, check.spend_raw_tx = CheckState.DISPENSED, tx_hash, None
        if check.remaining_redemptions is not None:
            check.remaining_redemptions = max(check.remaining_redemptions - 1, 0)
        check.dispensed_at = float(int(time.time()))  # whole seconds: as the FHIR form and the receipt say it
        check.after_dispense = AfterDispense.ANNOUNCE
        self._save(check)
        LOG.info("check %s dispensed, tx %s, %s left", check.check_id, tx_hash, check.remaining_redemptions)
        await self._forget_presentation(check)
        await self._after_dispense(check)

    async def fhir_dispense(self, check: StoredCheck) -> dict[str, Any]:
        """The dispense as FHIR R4, for the pharmacy's systems (never with the token's secret key)."""
        if self._did is None:
            public_did = await self.ctx.admin.public_did()
            self._did = public_did.did if public_did else None
        return medication_dispense(
            check.prescription or {}, dispense_id=check.check_id,
            when_handed_over=dt.datetime.fromtimestamp(check.dispensed_at or check.updated_at, dt.UTC),
            pharmacy_name=self.ctx.config.label, pharmacy_identifier=self._did, token_tx_hash=check.spend_tx_hash,
            remaining_redemptions=check.remaining_redemptions, **_substituted(check.substitution))

    # -- after a dispense: the event, the signed receipt, its delivery to the wallet --------------------
    async def _after_dispense(self, check: StoredCheck) -> None:
        """The steps still to do for a recorded dispense (`check.after_dispense`), in order: sign the receipt
        (the FHIR MedicationDispense with the spend's hash, signed with the pharmacy's DID key), record the
        `prescription.dispensed` event carrying both, send the receipt to the patient's wallet when the
        check came over a connection. A step that fails stays for the housekeeping loop; one that never can
        succeed (the record cannot be written as FHIR) is logged and given up. Called under the check's lock."""
        if check.after_dispense in (AfterDispense.ANNOUNCE, AfterDispense.SIGN):
            fhir, permanent = await self._fhir_for_receipt(check)
            if fhir is not None and check.receipt_jws is None:
                check.receipt_jws, permanent = await self._sign_receipt(check, fhir)
            if check.receipt_jws is not None:
                after = AfterDispense.DELIVER if check.connection_id else None
            else:
                after = None if permanent else AfterDispense.SIGN
            announce, check.after_dispense = check.after_dispense == AfterDispense.ANNOUNCE, after
            if announce:  # the event once, with whatever the receipt step achieved
                self._save(check, EventType.DISPENSED, medication_dispense=fhir)
            else:
                self._save(check)
        if check.after_dispense == AfterDispense.DELIVER:
            check.after_dispense = await self._deliver_receipt(check)
            self._save(check)

    async def _resume_after_dispense(self, check_id: str) -> None:
        """The housekeeping loop's and start-up's retry of `_after_dispense`."""
        async with self._lock(check_id):
            check = self.get(check_id)
            if check.state != CheckState.DISPENSED or check.after_dispense is None:
                return
            if check.after_dispense == AfterDispense.ANNOUNCE:  # stopped right after the spend was recorded
                await self._forget_presentation(check)
            await self._after_dispense(check)

    async def _fhir_for_receipt(self, check: StoredCheck) -> tuple[dict[str, Any] | None, bool]:
        """The FHIR form, or None and whether that is for good (it cannot be written) or for now."""
        try:
            return await self.fhir_dispense(check), False
        except AdminApiError as exc:  # the agent's public DID could not be read
            LOG.warning("check %s: no FHIR MedicationDispense yet: %s", check.check_id, exc.reason)
            return None, False
        except Exception:  # the dispense stands; a record that is no FHIR MedicationDispense gets no receipt
            LOG.exception("check %s: no FHIR MedicationDispense, so no receipt", check.check_id)
            return None, True

    async def _sign_receipt(self, check: StoredCheck, fhir: dict[str, Any]) -> tuple[str | None, bool]:
        """The receipt signed by the agent with the pharmacy's public DID key; or None (logged) and whether
        that is for good (the record makes no valid receipt) or for now (the agent did not sign)."""
        if self._did is None:
            LOG.warning("check %s: no receipt yet: the pharmacy's agent has no public DID", check.check_id)
            return None, False
        try:
            receipt = receipts.DispenseReceipt(iss=self._did, tx_hash=check.spend_tx_hash, medication_dispense=fhir,
                                               dispensed_at=dt.datetime.fromisoformat(fhir["whenHandedOver"]))
        except Exception:  # e.g. a 64-digit hex run in the dosage text, which a receipt refuses (it could be a key)
            LOG.exception("check %s: the dispense makes no valid receipt; none is signed", check.check_id)
            return None, True
        try:
            return await asyncio.wait_for(self.ctx.admin.sign_jws(self._did, receipt.signing_payload(),
                                                                  typ=receipts.TYP), SIGN_TIMEOUT_S), False
        except (AdminApiError, TimeoutError) as exc:
            LOG.warning("check %s: receipt not signed yet: %s", check.check_id,
                        exc.reason if isinstance(exc, AdminApiError) else "the agent did not answer in time")
        except Exception:  # never lets the dispense fail: retried by the housekeeping loop
            LOG.exception("check %s: receipt not signed", check.check_id)
        return None, False

    async def _deliver_receipt(self, check: StoredCheck) -> AfterDispense | None:
        """Send the receipt to the patient's wallet as a basic message; DELIVER again if the agent failed."""
        try:
            await self.ctx.admin.send_message(check.connection_id, MESSAGE_PREFIX + check.receipt_jws)
        except AdminApiError as exc:
            if isinstance(exc, AgentUnreachable) or exc.status >= 500:
                LOG.warning("check %s: receipt not sent to the wallet yet: %s", check.check_id, exc.reason)
                return AfterDispense.DELIVER
            # the connection is gone: the receipt stays available here (API, printable PDF)
            LOG.warning("check %s: receipt cannot be sent over connection %s: %s", check.check_id,
                        check.connection_id, exc.reason[:200])
            return None
        LOG.info("check %s: receipt sent to the wallet", check.check_id)
        return None

    def receipt(self, check_id: str) -> ReceiptView:
        """A dispensed check's receipt as this pharmacy signed it. Conflict if the check has none (not
        dispensed, or it could not be made); Unavailable while its signing is being retried."""
        check = self.get(check_id)
        if check.state != CheckState.DISPENSED:
            raise Conflict(f"check is {check.state}; only a dispensed check has a receipt")
        if check.receipt_jws is None:
            if check.after_dispense in (AfterDispense.ANNOUNCE, AfterDispense.SIGN):
                raise unavailable("the receipt is not signed yet (the pharmacy's agent did not sign it)")
            raise Conflict("this dispense has no receipt")
        try:
            signed_receipt = own_receipt(check.receipt_jws)
        except ValueError:  # SignatureInvalid, ReceiptInvalid: a stored receipt that no longer reads as one
            LOG.exception("check %s: the stored receipt is unreadable", check.check_id)
            raise Conflict("this dispense's stored receipt is unreadable") from None
        return ReceiptView(check_id=check.check_id, jws=check.receipt_jws, receipt=signed_receipt)

    async def receipt_pdf(self, check_id: str) -> bytes:
        """The printable receipt (documents.receipt_pdf): what was dispensed, and the signed receipt as a QR
        code, with the pharmacy's current verkey."""
        view = self.receipt(check_id)
        try:
            public_did = await self.ctx.admin.public_did()
        except AdminApiError:  # the page prints without it; the QR code is what verifies
            public_did = None
        verkey = public_did.verkey if public_did is not None and public_did.did == view.receipt.iss else None
        return await asyncio.to_thread(receipt_pdf, view.receipt, view.jws, pharmacy_name=self.ctx.config.label,
                                       signer_verkey=verkey)

    async def verify_receipt(self, jws: str) -> VerifiedReceipt:
        """Anyone's receipt, verified against its signer DID's verkey on the Indy network; InvalidRequest
        with the reason (`problem`) if it does not verify."""
        found = await check_receipt(jws, self._ledger_verkey)
        if not found.verified or found.receipt is None:
            raise InvalidRequest(f"the receipt does not verify: {found.detail}", problem=found.problem)
        return VerifiedReceipt(signer_did=found.signer_did, verkey=found.verkey, receipt=found.receipt)

    async def _secret_key(self, check: StoredCheck) -> str | None:
        """The one-time key of the very token that was checked, from the verified sub-proof (or, for a
        pickup code, from memory: None after a restart, the paper is scanned again)."""
        if check.channel != Channel.WALLET:
            key = self._pickup_keys.get(check.check_id)
            return key.get_secret_value() if key is not None else None
        try:
            record = await self.ctx.admin.presentation_exchange(check.pres_ex_id)
        except AgentUnreachable:
            raise
        except AdminApiError:
            return None
        presented = examine(record.request, record.presentation, record.verified,
                            self.ctx.config.prescription_schema_id)
        if not isinstance(presented, Presented) or presented.prescription.token.address != check.token_address:
            return None
        return presented.prescription.token.secret_key.get_secret_value()

    async def _forget_presentation(self, check: StoredCheck) -> None:
        """The agent's exchange record holds the token's secret key: drop it once the check is final."""
        self._pickup_keys.pop(check.check_id, None)
        if not check.pres_ex_id:
            return
        try:
            await self.ctx.admin.delete_presentation_exchange(check.pres_ex_id)
        except AdminApiError as exc:
            LOG.warning("could not delete presentation %s: %s", check.pres_ex_id, exc.reason)

    async def wait_checked(self, check_id: str, timeout_s: float) -> StoredCheck:
        """Until the check leaves `requested` (presentation verified or refused)."""
        check = self.get(check_id)
        deadline = time.monotonic() + timeout_s
        while check.state == CheckState.REQUESTED and time.monotonic() < deadline:
            waiter = self.ctx.bus.expect(PROOF_TOPIC, lambda p: p.get("pres_ex_id") == check.pres_ex_id)
            check = self.get(check_id)  # the event may have landed before the waiter was registered
            if check.state != CheckState.REQUESTED:
                break
            try:
                await waiter.wait(max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                break
            async with self._lock(check_id):  # the event handler finishes its decision under this lock
                check = self.get(check_id)
        return check


def _substituted(substitution: Substitution | None) -> dict[str, Any]:
    """`medication_dispense`'s arguments for what was handed over instead of the prescription."""
    if substitution is None:
        return {}
    return {"dispensed_medication": substitution.medication, "dispensed_quantity": substitution.quantity,
            "substitution": substitution.kind.value, "substitution_reason": substitution.reason}
