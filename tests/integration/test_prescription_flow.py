"""The prescription flow on the real network: doctor issues, patient holds, pharmacies verify and redeem.

Everything runs through the controllers' APIs (the controllers are processes started by
`Network.up()`, talking to real ACA-Py agents, the real Indy pool and the real EVM node). Each
refusal reason is provoked the way it happens in practice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal

import pytest
from eth_account import Account

from erx_contracts.client import PrescriptionTokenClient, new_prescription_key
from erx_cli.demo import EXPECTED, run_flow
from erx_cli.system import LocalSystem as Network
from erx_core.store import Store
from erx_roles.pharmacy import StoredCheck
from erx_roles.scenario import Scenario, sample_order
from erx_schemas.prescription import Prescriber, Prescription, PrescriptionOrder, TokenRef
from tests.support import chain_haystack, encodings

pytestmark = pytest.mark.integration

DOCTOR, PATIENT, PHARMACY_A, PHARMACY_B = "doctor", "patient", "pharmacy", "pharmacy-b"


@pytest.fixture(scope="module")
async def flow(network: Network):
    s = Scenario(network)
    cred_def_id = await s.onboard(DOCTOR, [PHARMACY_A, PHARMACY_B])
    s.cred_def_id = cred_def_id
    s.connection_id, _ = await s.connect(DOCTOR, PATIENT)
    yield s
    await s.close()


async def issue(flow: Scenario, **order) -> tuple[dict, str]:
    prescription = await flow.issue(DOCTOR, flow.connection_id, sample_order(**order))
    assert prescription["state"] == "issued", prescription
    return prescription, await flow.credential_for(PATIENT, prescription["prescription_id"])


async def token_status(network: Network, token: str):
    async with await PrescriptionTokenClient.connect(network.chain_config(), Account.create()) as chain:
        return await chain.status(token)


async def test_the_demo_scenario_ends_as_expected(network: Network, flow: Scenario):
    steps = await run_flow(network, log=lambda line: None)
    assert [(s.name, s.outcome, s.reason) for s in steps] == EXPECTED
    redeemed = [s for s in steps if s.name.startswith("redeem at")]
    assert all(s.tx_hash and s.tx_hash.startswith("0x") for s in redeemed)
    assert redeemed[0].tx_hash != redeemed[1].tx_hash


async def test_dispensing_decrements_the_token_and_is_recorded(network: Network, flow: Scenario):
    prescription, cred = await issue(flow, redemptions=2)
    check = await flow.redeem(PHARMACY_A, PATIENT, cred)
    assert check["state"] == "dispensed"
    assert check["remaining_redemptions"] == 1
    assert check["prescription"]["medication"]["name"] == "Ibuprofen"
    assert "token" not in check["prescription"], "the dispense record must not keep the token key"
    assert (await token_status(network, prescription["token_address"])).remaining == 1
    history = await flow.client(PHARMACY_A).get("/api/checks", limit=5)
    assert history["items"][0]["check_id"] == check["check_id"] and history["items"][0]["state"] == "dispensed"
    assert len(history["items"]) <= 5 and history["total"] >= len(history["items"])
    view = await flow.client(DOCTOR).get(f"/api/prescriptions/{prescription['prescription_id']}")
    assert view["remaining_redemptions"] == 1 and view["status"] == "redeemed 1 of 2"


async def test_presentation_over_a_connection(network: Network, flow: Scenario):
    """Instead of a QR code per request, the patient's wallet is connected to the pharmacy."""
    prescription, cred = await issue(flow)
    connections = await flow.connect(PHARMACY_B, PATIENT)
    check = await flow.present_over_connection(PHARMACY_B, PATIENT, connections, cred)
    assert check["state"] == "verified", check
    assert check["connection_id"] == connections[0]
    assert check["prescription"]["prescription_id"] == prescription["prescription_id"]
    dispensed = await flow.client(PHARMACY_B).post(f"/api/checks/{check['check_id']}/dispense")
    assert dispensed["state"] == "dispensed" and dispensed["remaining_redemptions"] == 0


async def test_a_pharmacys_deny_override_refuses_a_registered_prescriber_as_untrusted(network: Network,
                                                                                     flow: Scenario):
    """The practice is on the national register; pharmacy B denies it on its own: B refuses, A does not."""
    _, cred = await issue(flow)
    admin = Scenario(network, as_staff=False)  # the pharmacy's administration: a pharmacist may not
    pharmacy = admin.client(PHARMACY_B)
    await pharmacy.post("/api/trusted-prescribers", {"cred_def_id": flow.cred_def_id, "label": DOCTOR,
                                                     "decision": "deny"})
    try:
        check = await flow.present(PHARMACY_B, PATIENT, cred)
    finally:
        await pharmacy.request("DELETE", f"/api/trusted-prescribers/{flow.cred_def_id}")
        await admin.close()
    assert check["state"] == "refused"
    assert check["refusal"]["reason"] == "untrusted_issuer"
    assert (await flow.present(PHARMACY_A, PATIENT, cred))["state"] == "verified"


async def test_prescription_not_valid_yet_is_refused_as_not_yet_valid(network: Network, flow: Scenario):
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    _, cred = await issue(flow, valid_from=tomorrow.isoformat(),
                          valid_until=(tomorrow + dt.timedelta(days=7)).isoformat())
    check = await flow.redeem(PHARMACY_A, PATIENT, cred)
    assert check["state"] == "refused"
    assert check["refusal"]["reason"] == "not_yet_valid"  # the wallet cannot prove valid_from <= today


async def test_token_cancelled_on_chain_is_refused_as_cancelled(network: Network, flow: Scenario):
    prescription, cred = await issue(flow)
    async with await PrescriptionTokenClient.connect(network.chain_config(), network.chain_account(DOCTOR)) as c:
        await c.cancel(prescription["token_address"])
    check = await flow.redeem(PHARMACY_A, PATIENT, cred)
    assert check["state"] == "refused"
    assert check["refusal"]["reason"] == "cancelled"


async def test_key_that_matches_no_token_is_refused_as_unknown_token(network: Network, flow: Scenario):
    """A trusted practice's credential whose token was never created (e.g. a broken practice system)."""
    cred_def_id = flow.cred_def_id
    chain = network.chain_config()
    prescription = Prescription(
        order=PrescriptionOrder.model_validate(sample_order()),
        prescriber=Prescriber(name="Test Doctor", identifier="n/a"),
        token=TokenRef(chain_id=chain.chain_id, contract=chain.contract_address,
                       secret_key=new_prescription_key().private_key))
    async with network.admin(DOCTOR) as admin:
        connection_id = (await admin.connections(state="active"))[0].connection_id
        waiter_done = asyncio.get_running_loop().time() + 30
        await admin.send_offer(connection_id, cred_def_id, prescription.to_attributes())
        while True:
            found = await flow.client(PATIENT).get("/api/credentials", prescription_id=prescription.prescription_id)
            if found or asyncio.get_running_loop().time() > waiter_done:
                break
            await asyncio.sleep(0.2)
    assert found, "the patient's wallet did not store the credential"
    check = await flow.redeem(PHARMACY_A, PATIENT, found[0]["credential_id"])
    assert check["state"] == "refused"
    assert check["refusal"]["reason"] == "unknown_token"


async def test_presentation_that_does_not_verify_is_refused_and_nothing_is_spent(network: Network, flow: Scenario):
    """Revoked out of band while its token stays live: the proof fails and the pharmacy cannot name a
    revocation, so it refuses the presentation as invalid, and spends nothing."""
    prescription, cred = await issue(flow)
    async with network.admin(DOCTOR) as admin:
        record = await admin.credential_revocation_record((await flow.client(DOCTOR).get(
            f"/api/prescriptions/{prescription['prescription_id']}"))["cred_ex_id"])
        await admin.revoke(record["rev_reg_id"], record["cred_rev_id"])
    check = await flow.redeem(PHARMACY_A, PATIENT, cred)
    assert check["state"] == "refused"
    assert check["refusal"]["reason"] == "invalid_presentation"
    assert (await token_status(network, prescription["token_address"])).remaining == 1


async def test_two_pharmacies_racing_for_a_single_use_prescription_exactly_one_dispenses(
        network: Network, flow: Scenario):
    prescription, cred = await issue(flow, redemptions=1)
    checks = [await flow.present(pharmacy, PATIENT, cred) for pharmacy in (PHARMACY_A, PHARMACY_B)]
    assert [c["state"] for c in checks] == ["verified", "verified"]

    async def dispense(pharmacy: str, check: dict) -> dict:
        try:
            return await flow.client(pharmacy).post(f"/api/checks/{check['check_id']}/dispense")
        except Exception as exc:  # the loser's check comes back inside the 409 body
            return exc.body["check"] if getattr(exc, "status", None) == 409 else {"state": repr(exc)}

    results = await asyncio.gather(dispense(PHARMACY_A, checks[0]), dispense(PHARMACY_B, checks[1]))
    states = sorted((r["state"], (r.get("refusal") or {}).get("reason")) for r in results)
    assert states == [("dispensed", None), ("refused", "already_redeemed")]
    assert (await token_status(network, prescription["token_address"])).remaining == 0


async def test_pharmacy_crash_during_a_spend_neither_loses_nor_repeats_it(network: Network, flow: Scenario):
    """Kill the pharmacy controller once its spend is journaled and on its way to the chain; the
    restarted controller finishes that very transaction."""
    prescription, cred = await issue(flow, redemptions=3)
    check = await flow.present(PHARMACY_A, PATIENT, cred)
    assert check["state"] == "verified"
    dispense = asyncio.create_task(flow.client(PHARMACY_A).post(f"/api/checks/{check['check_id']}/dispense"))

    store = Store(network.org(PHARMACY_A).home / "controller.db")
    checks = store.table("check", StoredCheck)
    deadline = asyncio.get_running_loop().time() + 20
    while not (journaled := checks.get(check["check_id"])).spend_tx_hash:
        assert asyncio.get_running_loop().time() < deadline, "the spend was never journaled"
        await asyncio.sleep(0.01)
    record = network.supervisor.record(f"controller-{PHARMACY_A}")
    os.kill(record.pid, signal.SIGKILL)
    with pytest.raises(Exception):
        await dispense  # the connection dies with the controller
    store.close()

    await network.up()  # restarts the controller, which finishes the journaled spend
    after = await flow.client(PHARMACY_A).get(f"/api/checks/{check['check_id']}")
    assert after["state"] == "dispensed"
    assert after["spend_tx_hash"] == journaled.spend_tx_hash
    assert (await token_status(network, prescription["token_address"])).remaining == 2


async def test_no_personal_data_reaches_the_chain(network: Network, flow: Scenario):
    order = sample_order(patient_name="Zacharias Quellenberg-Ostrowski", patient_birth_date="1951-03-04",
                         medication={"name": "Levothyroxin", "code": "H03AA01", "code_system": "ATC",
                                     "strength": "75 µg", "form": "tablet"},
                         dosage_instructions="1 tablet every morning before breakfast", redemptions=2)
    prescription = await flow.issue(DOCTOR, flow.connection_id, order)
    cred = await flow.credential_for(PATIENT, prescription["prescription_id"])
    assert (await flow.redeem(PHARMACY_A, PATIENT, cred))["state"] == "dispensed"
    revoked = await flow.revoke(DOCTOR, prescription["prescription_id"])
    assert revoked["state"] == "revoked" and revoked["token_cancelled"] is True

    async with await PrescriptionTokenClient.connect(network.chain_config(), Account.create()) as chain:
        haystack = await chain_haystack(chain.rpc)
    personal = ["Zacharias Quellenberg-Ostrowski", "19510304", "1951-03-04", "Levothyroxin", "H03AA01",
                "1 tablet every morning before breakfast", prescription["prescription_id"],
                network.settings.agent(DOCTOR).label]
    for value in personal:
        for needle in encodings(value):
            assert needle.lower() not in haystack, f"{value!r} found on chain"
