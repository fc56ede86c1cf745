"""A transaction whose receipt does not come in time may still be mined: the roles never treat
`ReceiptTimeout` as final. A pharmacy's spend stays `dispensing` (503, finished by `resume` at restart);
a doctor's prescription stays `offered` with its token `pending` (and its journaled transaction), never
`failed`."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

import pytest
from eth_account import Account

from erx_contracts.errors import ReceiptTimeout
from erx_core.events import EventBus
from erx_core.settings import CheckSettings, OfferSettings
from erx_core.store import Store
from erx_core.webhooks import Outbox, WebhookSettings
from erx_roles.doctor import DoctorService, PrescriptionState
from erx_roles.doctor.models import TokenState
from erx_roles.errors import Unavailable
from erx_roles.http import http_error
from erx_roles.pharmacy import CheckState, PharmacyService, StoredCheck
from erx_roles.scenario import sample_order
from erx_schemas.prescription import PrescriptionOrder
from tests.support import LocalSigner

TX, RAW = "0x" + "ab" * 32, "0xf86c"


class SlowChain:
    """Sends, then never sees a receipt within the timeout."""

    config = SimpleNamespace(chain_id=1337)
    contract_address = "0x" + "11" * 20

    async def create(self, *_, journal=None, **__):
        await journal(TX, RAW)
        raise ReceiptTimeout(TX, 30.0, RAW)

    async def spend(self, _key, *, journal=None, expected_remaining=None):
        await journal(TX, RAW)
        raise ReceiptTimeout(TX, 30.0, RAW)


async def test_a_doctor_create_without_receipt_stays_pending_never_failed(tmp_path):
    store = Store(tmp_path / "doctor.db")

    async def connection(_):
        return SimpleNamespace(active=True, state="active")

    async def send_offer(*_, **__):
        return SimpleNamespace(cred_ex_id="ex1")

    ctx = SimpleNamespace(store=store, bus=EventBus(), admin=SimpleNamespace(connection=connection, send_offer=send_offer,
                                                                     sign_jws=LocalSigner().sign_jws),
                          outbox=Outbox(store, "doctor", WebhookSettings()), chain=SlowChain(),
                          config=SimpleNamespace(offers=OfferSettings(), label="Dr Test"))
    service = DoctorService(ctx)
    service.cred_def_id, service.issuer_did = "cred-def", "Th7MpTaRZVRYnPiabds81Y"
    offered = await service.issue(str(uuid.uuid4()), PrescriptionOrder.model_validate(sample_order()))
    assert offered.state == PrescriptionState.OFFERED, "the offer does not wait for the receipt"
    await asyncio.gather(*list(service._tasks))
    (record,) = service.records.all()
    assert record.state == PrescriptionState.OFFERED and record.token_state == TokenState.PENDING
    assert record.token_tx == TX and service.batches.get(TX).raw_tx == RAW, "kept for resume() later"


async def test_a_pharmacy_spend_without_receipt_stays_dispensing_with_a_503(tmp_path):
    store = Store(tmp_path / "pharmacy.db")
    ctx = SimpleNamespace(store=store, bus=EventBus(), admin=SimpleNamespace(), chain=SlowChain(),
                          outbox=Outbox(store, "pharmacy", WebhookSettings()),
                          config=SimpleNamespace(checks=CheckSettings()))
    service = PharmacyService(ctx)

    async def secret_key(_check):
        return Account.create().key.to_0x_hex()

    service._secret_key = secret_key
    service.checks.put("c1", StoredCheck(check_id="c1", pres_ex_id="p1", state=CheckState.VERIFIED))
    with pytest.raises(Unavailable) as caught:
        await service.dispense("c1")
    assert http_error(caught.value).status == 503
    check = service.checks.get("c1")
    assert check.state == CheckState.DISPENSING
    assert (check.spend_tx_hash, check.spend_raw_tx) == (TX, RAW), "kept for resume() at restart"
