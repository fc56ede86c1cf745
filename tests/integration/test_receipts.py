"""Signed dispense receipts and substitution on the real network: the pharmacy's ACA-Py agent signs the
FHIR MedicationDispense (with the spend's transaction hash) with its public DID key, the receipt reaches
the patient's wallet over their connection as a DIDComm basic message, and it verifies against the
pharmacy's verkey on the Indy pool, read by another organisation; an edited receipt does not. A generic
is recorded in the FHIR dispense; the substitution rules are enforced; a connectionless check's receipt
stays at the pharmacy (JSON, printable PDF)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from erx_cli.system import LocalSystem as Network
from erx_roles.client import ControllerApiError
from erx_roles.scenario import WAIT_S, Scenario, sample_order
from erx_schemas import receipt, signed
from erx_schemas.signed import Problem, SignatureInvalid

pytestmark = pytest.mark.integration

DOCTOR, PATIENT, PHARMACY = "doctor", "patient", "pharmacy"
GENERIC = {"name": "Ibu-ratiopharm", "code": "01016144", "code_system": "PZN", "strength": "400 mg", "form": "tablet"}
V3 = "http://terminology.hl7.org/CodeSystem/v3-substanceAdminSubstitution"


@pytest.fixture(scope="module")
async def flow(network: Network):
    s = Scenario(network)
    await s.onboard(DOCTOR, [PHARMACY])
    s.connection_id, _ = await s.connect(DOCTOR, PATIENT)
    yield s
    await s.close()


async def held_credential(flow: Scenario, **order) -> str:
    prescription = await flow.issue(DOCTOR, flow.connection_id, sample_order(**order))
    assert prescription["state"] == "issued", prescription
    return await flow.credential_for(PATIENT, prescription["prescription_id"])


async def wallet_receipt(flow: Scenario, jws: str) -> dict:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        held = [r for r in await flow.client(PATIENT).get("/api/receipts") if r["jws"] == jws]
        if held or asyncio.get_running_loop().time() > deadline:
            assert held, "the patient's wallet did not receive the receipt"
            return held[0]
        await asyncio.sleep(0.2)


def edited(jws: str) -> str:
    """The pharmacy's header and signature over a receipt claiming twice the quantity."""
    header, payload, signature = jws.split(".")
    body = json.loads(signed.b64url_decode(payload, "payload"))
    body["dispense"]["quantity"]["value"] *= 2
    return ".".join([header, signed.b64url_encode(json.dumps(body).encode()), signature])


async def verify_publicly(network: Network, jws: str) -> tuple[int, dict]:
    """`POST /api/receipts/verify` with no token at all: anyone may verify."""
    async with aiohttp.ClientSession() as anyone:
        async with anyone.post(network.controller_url(PHARMACY) + "/api/receipts/verify", json={"jws": jws}) as resp:
            return resp.status, await resp.json()


async def test_a_receipt_over_a_connection_reaches_the_wallet_and_verifies_against_the_pharmacys_verkey(
        network: Network, flow: Scenario):
    credential = await held_credential(flow)
    connections = await flow.connect(PHARMACY, PATIENT)
    check = await flow.present_over_connection(PHARMACY, PATIENT, connections, credential)
    assert check["state"] == "verified", check
    pharmacy = flow.client(PHARMACY)
    dispensed = await pharmacy.post(f"/api/checks/{check['check_id']}/dispense", {"substitution": {
        "kind": "generic", "medication": GENERIC, "reason": "the prescribed brand is out of stock"}})
    assert dispensed["state"] == "dispensed" and dispensed["receipt_jws"], dispensed
    assert dispensed["substitution"]["medication"]["code"] == "01016144" and dispensed["substitution"]["quantity"] == 20
    jws = dispensed["receipt_jws"]

    # the patient's wallet received it over the connection and verified it against the ledger
    held = await wallet_receipt(flow, jws)
    assert held["verified"] is True and held["connection_id"] == connections[1]
    assert held["summary"]["tx_hash"] == dispensed["spend_tx_hash"]
    assert held["summary"]["medication"] == "Ibu-ratiopharm 400 mg tablet"

    # anyone verifies it with the verkey the pool holds for the pharmacy's public DID
    async with network.admin(PHARMACY) as own:
        pharmacy_did = (await own.public_did()).did
    async with network.admin(DOCTOR) as anyone:
        verkey = await anyone.did_verkey(receipt.receipt_signer(jws))
    assert receipt.receipt_signer(jws) == pharmacy_did
    opened = receipt.open_receipt(jws, verkey)
    assert opened.iss == pharmacy_did and opened.tx_hash == dispensed["spend_tx_hash"]

    # the generic is recorded in the FHIR dispense, signed and served alike
    for resource in (opened.medication_dispense, await pharmacy.get(f"/api/checks/{check['check_id']}/fhir")):
        assert resource["substitution"]["wasSubstituted"] is True
        assert resource["substitution"]["type"]["coding"] == [{"system": V3, "code": "EC",
                                                               "display": "equivalent composition"}]
        assert resource["substitution"]["reason"] == [{"text": "the prescribed brand is out of stock"}]
        assert resource["medicationCodeableConcept"]["coding"] == [{"system": "http://fhir.de/CodeSystem/ifa/pzn",
                                                                    "code": "01016144"}]
    assert opened.medication_dispense == await pharmacy.get(f"/api/checks/{check['check_id']}/fhir")

    # an edited receipt does not verify, neither locally nor at the public endpoint
    with pytest.raises(SignatureInvalid) as caught:
        receipt.open_receipt(edited(jws), verkey)
    assert caught.value.reason == Problem.BAD_SIGNATURE
    status, answer = await verify_publicly(network, edited(jws))
    assert status == 422 and answer["problem"] == "bad_signature", answer
    status, answer = await verify_publicly(network, jws)
    assert status == 200 and answer["signer_did"] == pharmacy_did and answer["verkey"] == verkey
    assert answer["receipt"]["tx"] == dispensed["spend_tx_hash"]

    view = await pharmacy.get(f"/api/checks/{check['check_id']}/receipt")
    assert view["jws"] == jws and view["receipt"]["iss"] == pharmacy_did


async def test_a_connectionless_dispense_keeps_its_receipt_at_the_pharmacy_within_the_substitution_rules(
        network: Network, flow: Scenario):
    credential = await held_credential(flow, substitution_allowed=False)
    check = await flow.present(PHARMACY, PATIENT, credential)
    assert check["state"] == "verified", check
    pharmacy, path = flow.client(PHARMACY), f"/api/checks/{check['check_id']}"

    with pytest.raises(ControllerApiError) as refused:  # aut idem: no generic
        await pharmacy.post(f"{path}/dispense", {"substitution": {"kind": "generic", "medication": GENERIC,
                                                                  "reason": "out of stock"}})
    assert refused.value.status == 422 and "aut idem" in refused.value.body["rule"], refused.value.body
    with pytest.raises(ControllerApiError) as refused:  # more than prescribed
        await pharmacy.post(f"{path}/dispense", {"substitution": {"kind": "pack_size", "quantity": 21, "reason": "r"}})
    assert refused.value.status == 422 and "at most the prescribed quantity" in refused.value.body["rule"]
    assert (await pharmacy.get(path))["state"] == "verified"  # nothing was spent

    dispensed = await pharmacy.post(f"{path}/dispense", {"substitution": {"kind": "pack_size", "quantity": 10,
                                                                          "reason": "only packs of 10 in stock"}})
    assert dispensed["state"] == "dispensed" and dispensed["connection_id"] is None and dispensed["receipt_jws"]
    fhir = await pharmacy.get(f"{path}/fhir")
    assert fhir["quantity"] == {"value": 10, "unit": "tablet"} and fhir["substitution"]["wasSubstituted"] is True

    # printable, with the receipt in its QR code; and not in the wallet: there was no connection to send it over
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer "
                                              f"{network.operator_token(PHARMACY).get_secret_value()}"}) as http:
        async with http.get(network.controller_url(PHARMACY) + f"{path}/receipt.pdf") as resp:
            assert resp.status == 200 and resp.content_type == "application/pdf"
            assert (await resp.read()).startswith(b"%PDF")
    await asyncio.sleep(1)
    assert dispensed["receipt_jws"] not in [r["jws"] for r in await flow.client(PATIENT).get("/api/receipts")]
    status, answer = await verify_publicly(network, dispensed["receipt_jws"])
    assert status == 200 and answer["receipt"]["dispense"]["quantity"]["value"] == 10
