"""The practice's record of a prescription through faults: offers nobody stores expire (token
cancelled, exchange forgotten), a revoke that fails half-way is finished by asking again, a list
never fails because the chain is down, and start-up recovery sets one bad record aside."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from eth_account import Account

from erx_contracts.client import TokenStatus, TxResult
from erx_contracts.errors import ChainUnavailable
from erx_core.acapy_admin import AdminApiError, AgentUnreachable, CredentialExchange
from erx_core.events import EventBus
from erx_core.settings import OfferSettings
from erx_core.store import Store
from erx_core.webhooks import Outbox, WebhookSettings
from erx_roles.context import wire
from erx_roles.doctor import ISSUE_TOPIC, DoctorService, IssuedPrescription, PrescriptionState
from erx_roles.errors import Unavailable
from erx_roles.http import http_error
from erx_roles.scenario import sample_order
from erx_schemas.prescription import PrescriptionOrder


class FakeChain:
    def __init__(self):
        self.cancelled: list[str] = []
        self.never_created: set[str] = set()
        self.down = False

    async def status(self, token: str) -> TokenStatus:
        if self.down:
            raise ChainUnavailable("chain down")
        return TokenStatus(token=token, exists=token not in self.never_created, issuer=None, remaining=1,
                           not_before=0, not_after=2**40, cancelled=token in self.cancelled)

    async def cancel(self, token: str) -> TxResult:
        if self.down:
            raise ChainUnavailable("chain down")
        self.cancelled.append(token)
        return TxResult(tx_hash="0x" + "cc" * 32, block_number=1, gas_used=1)


class FakeAdmin:
    def __init__(self):
        self.deleted: list[str] = []
        self.revoke_failures = 0
        self.revoked: list[tuple[str, str]] = []
        self.exchanges: dict[str, CredentialExchange] = {}
        self.unpublished: set[tuple[str, str]] = set()  # revoked in the wallet, the ledger write failed
        self.ledger_write_fails = 0

    async def delete_credential_exchange(self, cred_ex_id: str) -> None:
        self.deleted.append(cred_ex_id)

    async def revoke(self, rev_reg_id, cred_rev_id, **_):
        if self.revoke_failures:
            self.revoke_failures -= 1
            raise AgentUnreachable("POST", "/anoncreds/revocation/revoke", 0, "timed out: pool without quorum")
        if (rev_reg_id, cred_rev_id) not in self.revoked:
            self.revoked.append((rev_reg_id, cred_rev_id))
        if self.ledger_write_fails:  # ACA-Py answers 200 although the ledger write failed
            self.ledger_write_fails -= 1
            self.unpublished.add((rev_reg_id, cred_rev_id))

    async def revoked_on_ledger(self, rev_reg_id: str) -> set[int]:
        return {int(c) for r, c in self.revoked if r == rev_reg_id and (r, c) not in self.unpublished}

    async def credential_exchange(self, cred_ex_id: str) -> CredentialExchange:
        if cred_ex_id not in self.exchanges:
            raise AdminApiError("GET", "/x", 404, "not found")
        return self.exchanges[cred_ex_id]


def doctor(tmp_path) -> tuple[DoctorService, FakeAdmin, FakeChain, Outbox]:
    store = Store(tmp_path / "doctor.db")
    admin, chain, outbox = FakeAdmin(), FakeChain(), Outbox(store, "doctor", WebhookSettings())
    settings = SimpleNamespace(offers=OfferSettings(unstored_after_s=600))
    ledger = SimpleNamespace(revoked_indexes=admin.revoked_on_ledger)  # the pool, as the fake agent published it
    ctx = SimpleNamespace(store=store, bus=EventBus(), admin=admin, outbox=outbox, chain=chain, ledger=ledger,
                          config=settings)
    return DoctorService(ctx), admin, chain, outbox


def prescription(service: DoctorService, state: PrescriptionState, created_at: float = 0.0, **fields):
    pid = str(uuid.uuid4())
    return service.records.put(pid, IssuedPrescription(
        prescription_id=pid, connection_id=str(uuid.uuid4()), state=state, created_at=created_at,
        order=PrescriptionOrder.model_validate(sample_order()), token_address=Account.create().address,
        cred_ex_id=str(uuid.uuid4()), **fields))


async def test_offers_never_stored_expire_with_their_token_cancelled_and_exchange_forgotten(tmp_path):
    service, admin, chain, outbox = doctor(tmp_path)
    t0 = 1_000_000.0
    old = prescription(service, PrescriptionState.OFFERED, created_at=t0 - 601)
    fresh = prescription(service, PrescriptionState.OFFERED, created_at=t0 - 10)
    issued = prescription(service, PrescriptionState.ISSUED, created_at=t0 - 9999)
    assert await service.expire_stale_offers(now=t0) == [old.prescription_id]
    after = service.records.get(old.prescription_id)
    assert after.state == PrescriptionState.DECLINED and "did not store" in after.error
    assert chain.cancelled == [old.token_address] and admin.deleted == [old.cred_ex_id]
    assert service.records.get(fresh.prescription_id).state == PrescriptionState.OFFERED
    assert service.records.get(issued.prescription_id).state == PrescriptionState.ISSUED
    assert [e.type for e in outbox.events()] == ["prescription.declined"]
    assert await service.expire_stale_offers(now=t0) == []


async def test_a_revoke_that_fails_half_way_is_finished_by_asking_again(tmp_path):
    service, admin, chain, outbox = doctor(tmp_path)
    record = prescription(service, PrescriptionState.ISSUED, rev_reg_id="r", cred_rev_id="1")
    admin.revoke_failures = 1
    with pytest.raises(Unavailable) as first:
        await service.revoke(record.prescription_id)
    assert http_error(first.value).status == 503 and http_error(first.value).headers["Retry-After"]
    half = service.records.get(record.prescription_id)
    assert half.state == PrescriptionState.ISSUED and half.revoke_tx, "the cancel is recorded"
    assert chain.cancelled == [record.token_address]
    assert (await service.view(half)).status == "revoking"
    done = await service.revoke(record.prescription_id)
    assert done.state == PrescriptionState.REVOKED and admin.revoked == [("r", "1")]
    assert chain.cancelled == [record.token_address], "the token is cancelled once"
    assert (await service.revoke(record.prescription_id)).state == PrescriptionState.REVOKED
    assert [e.type for e in outbox.events()] == ["prescription.revoked"]


async def test_a_list_never_fails_while_the_chain_is_down(tmp_path):
    service, _, chain, _ = doctor(tmp_path)
    record = prescription(service, PrescriptionState.ISSUED)
    chain.down = True
    view = await service.view(record)
    assert view.status == "issued (token status unknown)" and view.remaining_redemptions is None


async def test_recovery_sets_a_bad_record_aside_and_settles_the_others(tmp_path):
    service, admin, chain, _ = doctor(tmp_path)
    good = prescription(service, PrescriptionState.OFFERED)
    bad = prescription(service, PrescriptionState.OFFERED)
    admin.exchanges[good.cred_ex_id] = CredentialExchange(cred_ex_id=good.cred_ex_id, state="abandoned",
                                                          error_msg="declined by the wallet's user")
    admin.exchanges[bad.cred_ex_id] = CredentialExchange(cred_ex_id=bad.cred_ex_id, state="abandoned")
    original_cancel = chain.cancel

    async def cancel(token: str):
        if token == bad.token_address:
            raise RuntimeError("a record that cannot be settled")
        return await original_cancel(token)

    chain.cancel = cancel
    assert await service.recover() == [good.prescription_id]
    assert service.records.get(good.prescription_id).state == PrescriptionState.DECLINED
    assert service.records.get(bad.prescription_id).state == PrescriptionState.OFFERED
    assert list(service.needs_attention) == [bad.prescription_id]


async def test_an_issuance_stuck_at_its_token_is_settled_from_the_chain(tmp_path):
    """The controller died between the create and the offer (or the create's receipt never came):
    the key is gone, so a token that exists is cancelled and the record fails; never a live token
    under a failed record."""
    from erx_roles.doctor import UNFINISHED_CREATE_AFTER_S

    service, _, chain, _ = doctor(tmp_path)
    t0 = 1_000_000.0
    created = prescription(service, PrescriptionState.CREATING_TOKEN, created_at=t0 - UNFINISHED_CREATE_AFTER_S - 1)
    lost = prescription(service, PrescriptionState.CREATING_TOKEN, created_at=t0 - UNFINISHED_CREATE_AFTER_S - 1)
    chain.never_created.add(lost.token_address)
    young = prescription(service, PrescriptionState.CREATING_TOKEN, created_at=t0 - 5)
    assert sorted(await service.settle_unfinished_creates(now=t0)) == sorted([created.prescription_id,
                                                                               lost.prescription_id])
    assert chain.cancelled == [created.token_address]
    assert service.records.get(created.prescription_id).state == PrescriptionState.FAILED
    assert "cancelled" in service.records.get(created.prescription_id).error
    assert service.records.get(lost.prescription_id).state == PrescriptionState.FAILED
    assert service.records.get(young.prescription_id).state == PrescriptionState.CREATING_TOKEN


async def test_a_revocation_the_ledger_did_not_take_is_not_reported_revoked(tmp_path, monkeypatch):
    """ACA-Py answers the revoke with 200 when the pool has no quorum; only the ledger says whether
    it is revoked. Until it does, the prescription is `revoking`."""
    monkeypatch.setattr("erx_roles.doctor.service.REVOCATION_VISIBLE_S", 0.05)
    service, admin, chain, outbox = doctor(tmp_path)
    record = prescription(service, PrescriptionState.ISSUED, rev_reg_id="r", cred_rev_id="7")
    admin.ledger_write_fails = 1
    with pytest.raises(Unavailable) as first:
        await service.revoke(record.prescription_id)
    assert http_error(first.value).status == 503
    assert service.records.get(record.prescription_id).state == PrescriptionState.ISSUED
    assert outbox.events() == []
    assert (await service.view(service.records.get(record.prescription_id))).status == "revoking"
    admin.unpublished.clear()  # the validators that kept the write order it once quorum is back
    done = await service.revoke(record.prescription_id)
    assert done.state == PrescriptionState.REVOKED and await admin.revoked_on_ledger("r") == {7}
    assert admin.revoked == [("r", "7")], "revoked once in the wallet"


async def test_the_agent_s_events_reach_the_service_once_wired_as_at_start_up(tmp_path):
    """The service subscribes nothing itself: `wire` (what serve.build_app calls) subscribes its handlers."""
    service, _, chain, outbox = doctor(tmp_path)
    record = prescription(service, PrescriptionState.OFFERED)
    event = {"cred_ex_id": record.cred_ex_id, "state": "abandoned", "error_msg": "declined by the wallet's user"}
    await service.ctx.bus.publish(ISSUE_TOPIC, event)
    assert service.records.get(record.prescription_id).state == PrescriptionState.OFFERED, "not wired yet"
    wire(service, service.ctx.bus)
    await service.ctx.bus.publish(ISSUE_TOPIC, event)
    after = service.records.get(record.prescription_id)
    assert after.state == PrescriptionState.DECLINED and after.error == "declined by the wallet's user"
    assert chain.cancelled == [record.token_address] and [e.type for e in outbox.events()] == ["prescription.declined"]
