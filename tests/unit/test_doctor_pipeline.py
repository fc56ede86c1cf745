"""The issuance pipeline with a fake chain: the offer goes out without waiting for the token's receipt;
the creates of concurrent issuances go as one createBatch, journaled on each record before it is sent;
a prescription is `issued` only once the wallet stored it AND its token is mined; a create that fails
withdraws the offer or revokes the stored credential (the record `failed`, with its event); a create
without a receipt stays pending and is finished from the journal, also by a restarted controller."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from types import SimpleNamespace

import pytest

from erx_contracts.client import TokenSpec, TokenStatus, TxResult
from erx_contracts.errors import ReceiptTimeout, TransactionDropped, TransactionReverted, UnknownToken
from erx_core.acapy_admin import AdminApiError, CredentialExchange
from erx_core.events import EventBus
from erx_core.settings import OfferSettings
from erx_core.store import Store
from erx_core.webhooks import Outbox, WebhookSettings
from erx_roles.context import wire
from erx_core.documents import codes_in_upload
from erx_roles.doctor import ISSUE_TOPIC, UNFINISHED_CREATE_AFTER_S, DoctorService, PrescriptionState
from erx_roles.doctor.service import UNPRINTED_AFTER_S
from erx_roles.doctor.models import TokenState
from erx_roles.errors import Unavailable
from erx_roles.scenario import sample_order
from erx_schemas import paper, signed
from erx_schemas.prescription import PrescriptionOrder, TherapyPlan, therapy_orders
from tests.support import LocalSigner


class FakeChain:
    """Creates wait for `mine()` (one block); `outcome` decides how the next sent batch ends."""

    config = SimpleNamespace(chain_id=1337)
    contract_address = "0x" + "11" * 20
    address = "0x" + "22" * 20

    def __init__(self):
        self.sent: list[list[str]] = []  # tokens per transaction, in order
        self.created: set[str] = set()
        self.cancelled: list[str] = []
        self.journaled: dict[str, list[str]] = {}
        self.block = asyncio.Event()
        self.outcome: BaseException | None = None
        self.resumes: list[str] = []
        self.resume_outcome: BaseException | None = None

    def mine(self):
        self.block.set()

    async def create(self, token, *, redemptions, not_before, not_after, journal=None):
        return await self.create_batch([TokenSpec(token=token, redemptions=redemptions, not_before=not_before,
                                                  not_after=not_after)], journal=journal)

    async def create_batch(self, specs, *, journal=None):
        tokens = [s.token for s in specs]
        self.sent.append(tokens)
        tx = "0x" + f"{len(self.sent):064x}"
        if journal is not None:
            await journal(tx, f"0xraw{len(self.sent)}")
        self.journaled[tx] = tokens
        await self.block.wait()
        if self.outcome is not None:
            raise self.outcome
        self.created.update(tokens)
        return TxResult(tx_hash=tx, block_number=len(self.sent), gas_used=1)

    async def resume(self, tx_hash, raw_tx):
        self.resumes.append(tx_hash)
        if self.resume_outcome is not None:
            raise self.resume_outcome
        self.created.update(self.journaled[tx_hash])
        return TxResult(tx_hash=tx_hash, block_number=1, gas_used=1)

    async def status(self, token):
        return TokenStatus(token=token, exists=token in self.created, issuer=None, remaining=1, not_before=0,
                           not_after=2**40, cancelled=token in self.cancelled)

    async def cancel(self, token):
        if token not in self.created:
            raise UnknownToken(token=token)
        self.cancelled.append(token)
        return TxResult(tx_hash="0x" + "cc" * 32, block_number=1, gas_used=1)


class FakeAdmin:
    sign_jws = LocalSigner().sign_jws

    async def did_verkey(self, did):  # the ledger does not answer: the page is printed without the verkey
        raise AdminApiError("GET", "/ledger/did-verkey", 503, "no quorum")

    def __init__(self):
        self.offers: dict[str, CredentialExchange] = {}
        self.reported: list[str] = []
        self.deleted: list[str] = []
        self.revoked: list[tuple[str, str]] = []

    async def connection(self, _):
        return SimpleNamespace(active=True, state="active")

    async def send_offer(self, connection_id, cred_def_id, attributes, comment=None):
        await asyncio.sleep(0.01)  # the agent's round trip
        cred_ex_id = str(uuid.uuid4())
        self.offers[cred_ex_id] = CredentialExchange(cred_ex_id=cred_ex_id, state="offer-sent")
        return self.offers[cred_ex_id]

    def issue(self, cred_ex_id: str) -> None:  # the wallet's request came: the agent issued
        self.offers[cred_ex_id] = CredentialExchange(
            cred_ex_id=cred_ex_id, state="credential-issued", thread_id=f"th-{cred_ex_id}", rev_reg_id="rr",
            cred_rev_id=str(len([o for o in self.offers.values() if o.cred_rev_id]) + 1))

    async def credential_exchange(self, cred_ex_id):
        if cred_ex_id not in self.offers:
            raise AdminApiError("GET", "/x", 404, "not found")
        return self.offers[cred_ex_id]

    async def decline_offer(self, cred_ex_id, description):
        self.reported.append(cred_ex_id)

    async def delete_credential_exchange(self, cred_ex_id):
        self.deleted.append(cred_ex_id)

    async def revoke(self, rev_reg_id, cred_rev_id, **_):
        self.revoked.append((rev_reg_id, cred_rev_id))

    async def revoked_indexes(self, rev_reg_id):
        return {int(c) for r, c in self.revoked if r == rev_reg_id}


def doctor(tmp_path, chain: FakeChain | None = None, store: Store | None = None):
    store = store or Store(tmp_path / "doctor.db")
    admin, chain = FakeAdmin(), chain or FakeChain()
    outbox = Outbox(store, "doctor", WebhookSettings())
    ctx = SimpleNamespace(store=store, bus=EventBus(), admin=admin, outbox=outbox, chain=chain,
                          ledger=SimpleNamespace(revoked_indexes=admin.revoked_indexes),
                          config=SimpleNamespace(offers=OfferSettings(unstored_after_s=600), label="Dr Test"))
    service = DoctorService(ctx)
    service.cred_def_id, service.issuer_did = "cred-def", "Th7MpTaRZVRYnPiabds81Y"
    wire(service, ctx.bus)
    return service, admin, chain, outbox


def order() -> PrescriptionOrder:
    return PrescriptionOrder.model_validate(sample_order())


async def stored(service: DoctorService, admin: FakeAdmin, pid: str) -> None:
    """The wallet stores the credential: the agent issued it, then the wallet's ack (`done`)."""
    cred_ex_id = service.get(pid).cred_ex_id
    admin.issue(cred_ex_id)
    await service.ctx.bus.publish(ISSUE_TOPIC, {"cred_ex_id": cred_ex_id, "state": "done"})


async def settled(service: DoctorService) -> None:
    while service._tasks:
        await asyncio.gather(*list(service._tasks))


def events(outbox: Outbox) -> list[str]:
    return [e.type.value for e in outbox.events()]


async def test_concurrent_issues_go_as_one_create_batch_and_the_offer_does_not_wait_for_it(tmp_path):
    service, admin, chain, outbox = doctor(tmp_path)
    issued = await asyncio.wait_for(asyncio.gather(*(service.issue("conn", order()) for _ in range(8))), 5)
    assert [r.state for r in issued] == [PrescriptionState.OFFERED] * 8, "answered before any block"
    assert len(chain.sent) == 1 and sorted(chain.sent[0]) == sorted(r.token_address for r in issued)
    (tx,) = chain.journaled
    for record in issued:  # journaled on every record of the batch before it was sent
        again = service.get(record.prescription_id)
        assert again.token_tx == tx and again.token_state == TokenState.PENDING
    assert service.batches.get(tx).prescription_ids == [r.prescription_id for r in issued]
    # the first wallet acknowledges before the block: offered still, issued once the token is mined
    await stored(service, admin, issued[0].prescription_id)
    first = service.get(issued[0].prescription_id)
    assert first.state == PrescriptionState.OFFERED and first.credential_stored and first.cred_rev_id
    waiting = asyncio.create_task(service.wait_issued(first.prescription_id, 5))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    chain.mine()
    await settled(service)
    assert (await waiting).state == PrescriptionState.ISSUED
    for record in issued[1:]:
        assert service.get(record.prescription_id).state == PrescriptionState.OFFERED
        await stored(service, admin, record.prescription_id)
    assert {service.get(r.prescription_id).state for r in issued} == {PrescriptionState.ISSUED}
    assert events(outbox) == ["prescription.offered"] * 8 + ["prescription.issued"] * 8
    assert len(chain.sent) == 1, "one transaction for all eight"


async def test_the_next_batch_collects_while_the_previous_waits_for_its_block(tmp_path):
    service, _, chain, _ = doctor(tmp_path)
    await service.issue("conn", order())
    later = await asyncio.gather(*(service.issue("conn", order()) for _ in range(5)))
    assert [len(t) for t in chain.sent] == [1], "one create in flight at a time"
    chain.mine()
    await settled(service)
    assert [len(t) for t in chain.sent] == [1, 5]
    assert {service.get(r.prescription_id).token_state for r in later} == {TokenState.CREATED}


async def test_a_block_that_takes_long_does_not_hold_the_next_batch_beyond_max_wait(tmp_path):
    service, _, chain, _ = doctor(tmp_path)
    service.tokens.max_wait_s = 0.05
    await service.issue("conn", order())
    await asyncio.sleep(0.1)
    await asyncio.gather(*(service.issue("conn", order()) for _ in range(3)))
    await asyncio.sleep(0.1)
    assert [len(t) for t in chain.sent] == [1, 3], "sent while the first still waits for its block"
    chain.mine()
    await settled(service)
    assert len(chain.created) == 4


async def test_a_failed_batch_withdraws_the_offers_and_revokes_what_was_stored(tmp_path):
    service, admin, chain, outbox = doctor(tmp_path)
    records = await asyncio.gather(*(service.issue("conn", order()) for _ in range(3)))
    held = records[0].prescription_id
    await stored(service, admin, held)
    chain.outcome = TransactionReverted(next(iter(chain.journaled)))
    chain.mine()
    await settled(service)
    after = {r.prescription_id: service.get(r.prescription_id) for r in records}
    assert {r.state for r in after.values()} == {PrescriptionState.FAILED}
    assert {r.token_state for r in after.values()} == {TokenState.FAILED}
    assert "revoked" in after[held].error and admin.revoked == [("rr", after[held].cred_rev_id)]
    assert sorted(admin.reported) == sorted(after[p].cred_ex_id for p in after if p != held), "offers withdrawn"
    assert all("withdrawn" in after[p].error for p in after if p != held)
    assert sorted(events(outbox)) == sorted(["prescription.offered"] * 3 + ["prescription.failed"] * 3)
    # a late acknowledgement of a withdrawn offer moves nothing
    await service.ctx.bus.publish(ISSUE_TOPIC, {"cred_ex_id": after[records[1].prescription_id].cred_ex_id,
                                                "state": "abandoned"})
    assert service.get(records[1].prescription_id).state == PrescriptionState.FAILED
    assert not chain.cancelled and not chain.created


async def test_an_offer_the_agent_issued_before_the_withdrawal_reached_it_is_revoked(tmp_path):
    service, admin, chain, outbox = doctor(tmp_path)
    record = await service.issue("conn", order())
    admin.issue(record.cred_ex_id)  # issued, the wallet's ack not here yet
    chain.outcome = TransactionReverted("0x1")
    chain.mine()
    await settled(service)
    after = service.get(record.prescription_id)
    assert after.state == PrescriptionState.FAILED and admin.revoked == [("rr", after.cred_rev_id)]
    assert events(outbox) == ["prescription.offered", "prescription.failed"]


async def test_a_create_without_receipt_stays_pending_and_is_finished_from_the_journal(tmp_path):
    service, admin, chain, outbox = doctor(tmp_path)
    records = await asyncio.gather(*(service.issue("conn", order()) for _ in range(3)))
    await stored(service, admin, records[0].prescription_id)
    (tx,) = chain.journaled
    chain.outcome = ReceiptTimeout(tx, 30.0, "0xraw1")
    chain.mine()
    await settled(service)
    for r in records:
        pending = service.get(r.prescription_id)
        assert pending.state == PrescriptionState.OFFERED and pending.token_state == TokenState.PENDING
        assert pending.token_tx == tx and "not confirmed" in pending.error
    assert events(outbox) == ["prescription.offered"] * 3
    # an hour on: the offers nobody stored expire; the stored credential waits for its token
    expired = await service.expire_stale_offers(now=records[0].created_at + 601)
    assert sorted(expired) == sorted(r.prescription_id for r in records[1:])
    assert service.get(records[0].prescription_id).state == PrescriptionState.OFFERED
    chain.outcome = None  # mined after all: the housekeeping loop finds it from the journal
    assert sorted(await service.settle_pending_tokens()) == sorted(r.prescription_id for r in records)
    assert chain.resumes == [tx]
    assert service.get(records[0].prescription_id).state == PrescriptionState.ISSUED
    assert sorted(chain.cancelled) == sorted(r.token_address for r in records[1:]), "expired: cancelled"
    assert events(outbox) == ["prescription.offered"] * 3 + ["prescription.declined"] * 2 + ["prescription.issued"]


async def test_a_restarted_controller_finishes_a_journaled_batch_once_for_all_its_records(tmp_path):
    store = Store(tmp_path / "doctor.db")
    service, admin, chain, _ = doctor(tmp_path, store=store)
    records = await asyncio.gather(*(service.issue("conn", order()) for _ in range(4)))
    await stored(service, admin, records[0].prescription_id)
    for task in list(service._tasks):  # the controller dies while the batch waits for its block
        task.cancel()
    await service.tokens.close()
    (tx,) = chain.journaled

    restarted, _, _, outbox2 = doctor(tmp_path, chain=chain, store=store)
    restarted.ctx.admin.offers = admin.offers
    assert await restarted.recover() == []
    assert sorted(await restarted.settle_pending_tokens()) == sorted(r.prescription_id for r in records)
    assert chain.resumes == [tx], "one resume for the batch"
    assert restarted.get(records[0].prescription_id).state == PrescriptionState.ISSUED
    assert {restarted.get(r.prescription_id).token_state for r in records} == {TokenState.CREATED}
    assert [restarted.get(r.prescription_id).state for r in records[1:]] == [PrescriptionState.OFFERED] * 3
    assert events(outbox2)[-1] == "prescription.issued"


async def test_a_restarted_controller_fails_a_dropped_batch_and_sends_a_create_never_journaled(tmp_path):
    store = Store(tmp_path / "doctor.db")
    service, admin, chain, _ = doctor(tmp_path, store=store)
    first = await service.issue("conn", order())
    late = await service.issue("conn", order())  # queued behind the first batch: never sent
    for task in list(service._tasks):
        task.cancel()
    await service.tokens.close()
    assert chain.sent == [[first.token_address]]

    restarted, admin2, _, outbox2 = doctor(tmp_path, chain=chain, store=store)
    restarted.ctx.admin.offers = admin.offers
    chain.resume_outcome = TransactionDropped(next(iter(chain.journaled)))
    chain.mine()
    await restarted.settle_pending_tokens()
    await settled(restarted)
    dropped = restarted.get(first.prescription_id)
    assert dropped.state == PrescriptionState.FAILED and dropped.token_state == TokenState.FAILED
    assert admin2.reported == [dropped.cred_ex_id]
    assert chain.sent[-1] == [late.token_address], "sent by the restarted controller"
    assert restarted.get(late.prescription_id).token_state == TokenState.CREATED
    assert events(outbox2) == ["prescription.offered"] * 2 + ["prescription.failed"]


async def test_an_offer_declined_while_its_token_is_pending_gets_the_token_cancelled_once_created(tmp_path):
    service, _, chain, outbox = doctor(tmp_path)
    record = await service.issue("conn", order())
    await service.ctx.bus.publish(ISSUE_TOPIC, {"cred_ex_id": record.cred_ex_id, "state": "abandoned",
                                                "error_msg": "declined by the wallet's user"})
    declined = service.get(record.prescription_id)
    assert declined.state == PrescriptionState.DECLINED and declined.token_state == TokenState.PENDING
    assert chain.cancelled == []
    chain.mine()
    await settled(service)
    assert chain.cancelled == [record.token_address]
    assert service.get(record.prescription_id).token_state == TokenState.CREATED
    assert events(outbox) == ["prescription.offered", "prescription.declined"]


async def test_an_issuance_killed_before_its_offer_with_a_journaled_create_is_settled_from_it(tmp_path):
    from erx_roles.doctor import IssuedPrescription
    from erx_roles.doctor.models import TokenBatch

    service, _, chain, _ = doctor(tmp_path)
    token = "0x" + "ab" * 20
    chain.journaled["0xfeed"] = [token]
    stuck = service.records.put("p1", IssuedPrescription(
        prescription_id="p1", connection_id="conn", state=PrescriptionState.CREATING_TOKEN, order=order(),
        token_address=token, token_state=TokenState.PENDING, token_tx="0xfeed", created_at=1000.0))
    service.batches.put("0xfeed", TokenBatch(tx_hash="0xfeed", raw_tx="0x01", prescription_ids=["p1"]))
    assert await service.settle_pending_tokens() == [], "creating_token: not this loop's"
    assert await service.settle_unfinished_creates(now=stuck.created_at + UNFINISHED_CREATE_AFTER_S + 1) == ["p1"]
    after = service.get("p1")
    assert chain.resumes == ["0xfeed"] and chain.cancelled == [token], "mined after all, then cancelled"
    assert after.state == PrescriptionState.FAILED and "cancelled" in after.error
    assert after.token_state == TokenState.CREATED
    assert await service.settle_pending_tokens() == [] and chain.cancelled == [token], "settled once"


# -- therapies and paper (issue 15) ---------------------------------------------------------------------

async def test_a_therapys_parts_are_offered_at_once_and_their_tokens_go_in_one_batch(tmp_path):
    service, admin, chain, _ = doctor(tmp_path)
    parts = therapy_orders(order(), TherapyPlan(parts=3, interval_days=28))
    records = await asyncio.wait_for(service.issue_therapy("conn", parts), 5)
    assert [(r.part, r.parts, r.state) for r in records] == [(k, 3, PrescriptionState.OFFERED) for k in (1, 2, 3)]
    assert len({r.therapy_id for r in records}) == 1 and len(chain.sent) == 1 and len(chain.sent[0]) == 3
    assert [r.order.valid_from for r in service.therapy(records[0].therapy_id)] == [p.valid_from for p in parts]
    chain.mine()
    await settled(service)


async def test_a_paper_prescription_is_returned_once_its_token_is_mined_with_a_code_the_practice_signed(tmp_path):
    service, admin, chain, outbox = doctor(tmp_path)
    signer = LocalSigner()
    service.ctx.admin.sign_jws = signer.sign_jws
    service.ctx.admin.did_verkey = lambda did: _verkey(signer)
    printing = asyncio.create_task(service.print_paper([order()]))
    await asyncio.sleep(0.05)
    assert not printing.done(), "nothing to print before the token exists"
    chain.mine()
    (record,), pdf = await asyncio.wait_for(printing, 5)
    assert record.state == PrescriptionState.PRINTING and record.channel == "paper" and record.token_state == "created"
    (text,) = codes_in_upload(pdf, "application/pdf")
    opened = paper.open_pickup_code(paper.parse_pickup_code(text), signer.verkey)
    assert opened.channel == "paper" and opened.token.address == record.token_address
    key = opened.token.secret_key.get_secret_value()
    assert key not in service.records.get(record.prescription_id).model_dump_json()
    assert events(outbox) == [], "issued once handed over"
    await service.handed_over([record])
    assert service.get(record.prescription_id).state == PrescriptionState.ISSUED
    assert events(outbox) == ["prescription.issued"] and key not in json.dumps(outbox.events()[0].data)


async def _verkey(signer: LocalSigner) -> str:
    return signer.verkey


async def test_a_printout_never_handed_over_has_its_token_cancelled(tmp_path):
    service, admin, chain, _ = doctor(tmp_path)
    service.ctx.admin.sign_jws = LocalSigner().sign_jws
    chain.mine()
    (record,), _ = await service.print_paper(therapy_orders(order(), TherapyPlan(parts=2, interval_days=28))[:1])
    assert await service.cancel_unprinted(now=time.time() + 60) == [], "not yet: the page may still go out"
    assert await service.cancel_unprinted(now=time.time() + UNPRINTED_AFTER_S + 1) == [record.prescription_id]
    assert chain.cancelled == [record.token_address]
    assert service.get(record.prescription_id).state == PrescriptionState.FAILED


async def test_a_paper_therapy_with_one_failed_token_prints_nothing_and_cancels_the_others(tmp_path):
    service, _, chain, _ = doctor(tmp_path)
    service.ctx.admin.sign_jws = LocalSigner().sign_jws
    submit = service.tokens.submit
    calls = []

    def failing_second(pid, spec):  # the second part's create fails, the others are mined
        calls.append(pid)
        if len(calls) == 2:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(TransactionReverted("0x2"))
            return future
        return submit(pid, spec)

    service.tokens.submit = failing_second
    chain.mine()
    with pytest.raises(Unavailable):
        await service.print_paper(therapy_orders(order(), TherapyPlan(parts=3, interval_days=28)))
    records = sorted(service.records.all(), key=lambda r: r.part)
    assert [r.state for r in records] == [PrescriptionState.FAILED] * 3
    assert sorted(chain.cancelled) == sorted(r.token_address for r in records if r.token_state == "created")
    assert len(chain.cancelled) == 2, "the two created tokens are cancelled: no part is redeemable"


async def test_a_paper_prescription_whose_token_fails_prints_nothing(tmp_path):
    service, _, chain, _ = doctor(tmp_path)
    chain.outcome = TransactionReverted("0x1")
    chain.mine()
    with pytest.raises(Unavailable):
        await service.print_paper([order()])
    (record,) = service.records.all()
    assert record.state == PrescriptionState.FAILED and "nothing was printed" in record.error


async def test_a_wallet_prescription_carries_its_pickup_code_for_a_representative(tmp_path):
    service, admin, chain, _ = doctor(tmp_path)
    sent = {}

    async def send_offer(connection_id, cred_def_id, attributes, comment=None):
        sent.update(attributes)
        return await FakeAdmin.send_offer(admin, connection_id, cred_def_id, attributes, comment)

    admin.send_offer = send_offer
    record = await service.issue("conn", order())
    code = paper.PickupCode.from_payload(json.loads(signed.b64url_decode(
        paper.parse_pickup_code(sent["pickup_code"]).split(".")[1], "payload")))
    assert code.channel == "wallet" and code.prescription_id == record.prescription_id
    assert code.token.secret_key.get_secret_value() == sent["token_secret_key"]
    chain.mine()
    await settled(service)
