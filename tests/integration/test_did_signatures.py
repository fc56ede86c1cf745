"""Documents signed with an organisation's public DID key, on the real network: the doctor's and the
pharmacies' ACA-Py 1.7 agents sign through `/wallet/jwt/sign`, the verkey comes from the Indy pool
(`/ledger/did-verkey`, checked against a state-proven NYM read), and `erx_schemas.signed` verifies.
Forgeries fail: an edited payload, another organisation's signature, a signature copied onto other
content."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from erx_cli.system import LocalSystem as Network
from erx_core.acapy_admin import AdminApiError
from erx_indy.ledger import IndyLedger
from erx_schemas import paper, receipt, signed
from erx_schemas.signed import Problem, SignatureInvalid

pytestmark = pytest.mark.integration

DOCTOR, PHARMACY, PHARMACY_B, PATIENT = "doctor", "pharmacy", "pharmacy-b", "patient"
TX = "0x" + "3c" * 32


@pytest.fixture(scope="module")
async def dids(network: Network) -> dict[str, str]:
    found = {}
    for name in (DOCTOR, PHARMACY, PHARMACY_B):
        async with network.admin(name) as admin:
            found[name] = (await admin.public_did()).did
    return found


def pickup_code(did: str) -> paper.PickupCode:
    return paper.PickupCode(
        channel="paper", iss=did, prescription_id="0b6f3a52-7d1e-4c55-9a1f-3f8e2d9c4b10", issue_date=dt.date.today(),
        patient_name="Erika Mustermann", patient_birth_date=dt.date(1964, 8, 12),
        medication={"name": "Ibuprofen", "code": "M01AE01", "code_system": "ATC", "strength": "400 mg",
                    "form": "tablet"},
        dosage_instructions="1 tablet up to 3 times a day after meals", quantity=20, redemptions=1,
        valid_from=dt.date.today(), valid_until=dt.date.today() + dt.timedelta(days=28),
        prescriber={"name": "Dr. Anna Schmidt", "identifier": "123456789"},
        token={"chain_id": 1337, "contract": "0x" + "5e" * 20, "secret_key": "0x" + "a7" * 32})


def dispense_receipt(did: str) -> receipt.DispenseReceipt:
    at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return receipt.DispenseReceipt(iss=did, tx_hash=TX, dispensed_at=at, medication_dispense={
        "resourceType": "MedicationDispense", "id": "c1d2e3f4-0a1b-4c2d-8e3f-4a5b6c7d8e9f", "status": "completed",
        "identifier": [{"system": receipt.TOKEN_SPEND_TX_SYSTEM, "value": TX}],
        "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "M01AE01"}],
                                      "text": "Ibuprofen 400 mg tablet"},
        "quantity": {"value": 20, "unit": "tablet"}, "whenHandedOver": at.isoformat()})


def edited(jws: str, change) -> str:
    """The same header and signature over a payload changed by `change` (ACA-Py's JSON encoding)."""
    header, payload, signature = jws.split(".")
    body = json.loads(signed.b64url_decode(payload, "payload"))
    change(body)
    return ".".join([header, signed.b64url_encode(json.dumps(body).encode()), signature])


async def test_the_agent_signs_with_the_key_the_ledger_holds_for_its_did(network: Network, dids):
    did = dids[DOCTOR]
    async with network.admin(DOCTOR) as doctor:
        jws = await doctor.sign_jws(did, {"iss": did, "hello": "wörld"}, typ="erx-test+jwt")
        verkey = await doctor.did_verkey(did)
        public = await doctor.public_did()
    document = signed.SignedDocument.parse(jws)
    # ACA-Py 1.7's header for an unqualified did:sov public DID, exactly
    assert document.header == {"typ": "erx-test+jwt", "alg": "EdDSA", "kid": f"did:sov:{did}#key-1"}
    assert verkey == public.verkey
    async with await IndyLedger.open(network.genesis_file) as ledger:
        nym = await ledger.get_nym(did)  # a state-proven read, independent of the agents
    assert nym is not None and nym.verkey == verkey
    assert signed.verify(jws, verkey, did=did, typ="erx-test+jwt") == {"iss": did, "hello": "wörld"}
    # any organisation reads the same verkey from the pool
    async with network.admin(PHARMACY) as pharmacy:
        assert await pharmacy.did_verkey(did) == verkey


async def test_a_paper_pickup_code_signed_by_the_practice_is_read_by_a_pharmacy(network: Network, dids):
    code = pickup_code(dids[DOCTOR])
    async with network.admin(DOCTOR) as doctor:
        jws = await doctor.sign_jws(dids[DOCTOR], code.signing_payload(), typ=paper.TYP)
    text = paper.pickup_code_text(jws)
    async with network.admin(PHARMACY) as pharmacy:
        found = paper.parse_pickup_code(text)
        signer = paper.pickup_signer(found)
        opened = paper.open_pickup_code(found, await pharmacy.did_verkey(signer))
    assert signer == dids[DOCTOR] and opened == code
    assert opened.token.secret_key.get_secret_value() == "0x" + "a7" * 32


async def test_forged_pickup_codes_fail(network: Network, dids):
    doctor_did, other_did = dids[DOCTOR], dids[PHARMACY_B]
    code = pickup_code(doctor_did)
    async with network.admin(DOCTOR) as doctor:
        genuine = await doctor.sign_jws(doctor_did, code.signing_payload(), typ=paper.TYP)
        other_content = await doctor.sign_jws(
            doctor_did, code.model_copy(update={"quantity": 100}).signing_payload(), typ=paper.TYP)
        doctor_verkey = await doctor.did_verkey(doctor_did)
        other_verkey = await doctor.did_verkey(other_did)
    async with network.admin(PHARMACY_B) as other:
        # another organisation signs the same prescription, claiming to be the practice (iss)
        impostor = await other.sign_jws(other_did, code.signing_payload(), typ=paper.TYP)
        # ... or naming itself: a genuine signature, but not the practice's
        own = await other.sign_jws(other_did, pickup_code(other_did).signing_payload(), typ=paper.TYP)

    def refused(jws: str, verkey: str, reason: Problem) -> None:
        with pytest.raises(SignatureInvalid) as caught:
            paper.open_pickup_code(jws, verkey)
        assert caught.value.reason == reason, caught.value

    # the edited payload: more tablets, another patient, the token key swapped
    refused(edited(genuine, lambda p: p.update(qty=100)), doctor_verkey, Problem.BAD_SIGNATURE)
    refused(edited(genuine, lambda p: p.update(patient="Max Mustermann")), doctor_verkey, Problem.BAD_SIGNATURE)
    refused(edited(genuine, lambda p: p["token"].update(key="0x" + "b8" * 32)), doctor_verkey, Problem.BAD_SIGNATURE)
    # another DID's signature under the practice's kid; and with its own kid but the practice as iss
    header, payload, _ = genuine.split(".")
    refused(".".join([header, payload, impostor.split(".")[2]]), doctor_verkey, Problem.BAD_SIGNATURE)
    refused(impostor, other_verkey, Problem.SIGNER_MISMATCH)
    # the practice's signature copied onto other content
    refused(".".join([header, other_content.split(".")[1], genuine.split(".")[2]]), doctor_verkey,
            Problem.BAD_SIGNATURE)
    # a genuine code of another organisation names that organisation: it verifies, and it is not the practice
    assert paper.pickup_signer(own) == other_did != doctor_did
    assert paper.open_pickup_code(own, other_verkey).iss == other_did
    # the pharmacy looks the verkey up by the kid's DID: the practice's verkey never verifies another's code
    refused(own, doctor_verkey, Problem.BAD_SIGNATURE)
    assert paper.open_pickup_code(genuine, doctor_verkey) == code


async def test_a_dispense_receipt_is_verified_against_the_pharmacys_verkey(network: Network, dids):
    did = dids[PHARMACY]
    issued = dispense_receipt(did)
    async with network.admin(PHARMACY) as pharmacy:
        jws = await pharmacy.sign_jws(did, issued.signing_payload(), typ=receipt.TYP)
    async with network.admin(DOCTOR) as anyone:
        verkey = await anyone.did_verkey(receipt.receipt_signer(jws))
    assert receipt.open_receipt(jws, verkey) == issued
    with pytest.raises(SignatureInvalid) as caught:
        receipt.open_receipt(edited(jws, lambda p: p["dispense"]["quantity"].update(value=40)), verkey)
    assert caught.value.reason == Problem.BAD_SIGNATURE
    # a receipt is no pickup code, even though it is signed
    with pytest.raises(SignatureInvalid) as caught:
        paper.open_pickup_code(jws, verkey)
    assert caught.value.reason == Problem.WRONG_TYPE


async def test_the_port_refuses_what_it_cannot_sign_or_look_up(network: Network, dids):
    async with network.admin(PATIENT) as patient:
        # the wallet holds no key for the practice's DID: ACA-Py 1.7 resolves the kid on the ledger, fails to
        # bind it to a key of its own and answers 500 (its MultikeyManagerError is not mapped to a 4xx)
        with pytest.raises(AdminApiError) as no_key:
            await patient.sign_jws(dids[DOCTOR], {"iss": dids[DOCTOR]})
        assert no_key.value.status == 500
        with pytest.raises(AdminApiError) as unknown:  # a well-formed DID that was never written
            await patient.did_verkey("7Tqg6BwSSWapxgUDm9KKgg")
        assert unknown.value.status == 404
