"""The prescription lifecycle of a national system, on the real network (issue 15): a therapy in parts
redeemed part by part at two pharmacies, a paper prescription for a patient without a wallet (and its
forgeries), and a representative collecting with the pickup code the patient's wallet hands out.

Everything runs through the controllers' APIs against real ACA-Py agents, the Indy pool (the practice's
verkey) and the EVM chain (the tokens)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from eth_account import Account

from erx_cli.system import LocalSystem as Network
from erx_contracts.client import PrescriptionTokenClient
from erx_core.documents import codes_in_upload
from erx_roles.client import ControllerApiError
from erx_roles.scenario import Scenario, sample_order
from erx_schemas import paper, signed
from erx_schemas.fhir import medication_request_from_order
from erx_schemas.prescription import Prescriber, PrescriptionOrder, TherapyPart

pytestmark = pytest.mark.integration

DOCTOR, PATIENT, PHARMACY_A, PHARMACY_B = "doctor", "patient", "pharmacy", "pharmacy-b"


@pytest.fixture(scope="module")
async def flow(network: Network):
    s = Scenario(network)
    await s.onboard(DOCTOR, [PHARMACY_A, PHARMACY_B])
    s.connection_id, _ = await s.connect(DOCTOR, PATIENT)
    yield s
    await s.close()


async def remaining(network: Network, token: str) -> int:
    async with await PrescriptionTokenClient.connect(network.chain_config(), Account.create()) as chain:
        return (await chain.status(token)).remaining


async def raw_post(flow: Scenario, organisation: str, path: str, *, json_body=None, data: bytes | None = None,
                   content_type: str | None = None) -> tuple[int, bytes, dict]:
    """A request whose answer (or body) is not JSON: a PDF, an upload."""
    client = flow.client(organisation)
    headers = {"Content-Type": content_type} if content_type else {}
    async with client._session.post(client.base_url + path, json=json_body, data=data, headers=headers) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


GROUP = str(uuid.uuid4())  # the practice software's id of the therapy (the doctor's controller makes its own)


def part_request(order: PrescriptionOrder, part: int, start: dt.date, days: int = 28) -> dict:
    """One part of a therapy as the practice software sends it: its own FHIR validityPeriod."""
    window = order.model_copy(update={"valid_from": start, "valid_until": start + dt.timedelta(days=days)})
    return medication_request_from_order(window, prescription_id=str(uuid.uuid4()),
                                         prescriber=Prescriber(name="Dr. Anna Schmidt", identifier="123456789"),
                                         therapy=TherapyPart(therapy_id=GROUP, part=part, parts=3))


async def test_a_three_part_therapy_is_redeemed_part_by_part_and_the_later_part_waits(network: Network,
                                                                                        flow: Scenario):
    today = dt.date.today()
    order = PrescriptionOrder.model_validate(sample_order(medication={
        "name": "Metformin", "code": "A10BA02", "code_system": "ATC", "strength": "500 mg", "form": "tablet"}))
    # parts 1 and 2 are valid from today (redeemable in any order), part 3 only from day 10
    requests = [part_request(order, 1, today), part_request(order, 2, today, 56),
                part_request(order, 3, today + dt.timedelta(days=10))]
    therapy = await flow.client(DOCTOR).post("/api/therapies/fhir", {"connection_id": flow.connection_id,
                                                                      "medication_requests": requests})
    parts = therapy["parts"]
    assert [p["part"] for p in parts] == [1, 2, 3] and {p["parts"] for p in parts} == {3}
    assert len({p["token_address"] for p in parts}) == 3, "each part has its own token"
    issued = [await flow.client(DOCTOR).get(f"/api/prescriptions/{p['prescription_id']}", wait=30) for p in parts]
    assert [p["state"] for p in issued] == ["issued"] * 3, issued
    view = await flow.client(DOCTOR).get(f"/api/therapies/{therapy['therapy_id']}")
    assert view["parts"][2]["status"] == f"valid from {(today + dt.timedelta(days=10)).isoformat()}"
    creds = [await flow.credential_for(PATIENT, p["prescription_id"]) for p in parts]
    held = await flow.client(PATIENT).get("/api/credentials", prescription_id=parts[1]["prescription_id"])
    assert held[0]["attributes"]["therapy_id"] == therapy["therapy_id"]
    assert held[0]["attributes"]["therapy_part"] == "2" and "pickup_code" not in held[0]["attributes"]

    second = await flow.redeem(PHARMACY_B, PATIENT, creds[1])  # any order: part 2 first, at pharmacy B
    assert second["state"] == "dispensed", second
    assert second["prescription"]["therapy"] == {"therapy_id": therapy["therapy_id"], "part": 2, "parts": 3}
    first = await flow.redeem(PHARMACY_A, PATIENT, creds[0])
    assert first["state"] == "dispensed", first
    third = await flow.redeem(PHARMACY_A, PATIENT, creds[2])
    assert third["state"] == "refused" and third["refusal"]["reason"] == "not_yet_valid", third
    assert await remaining(network, parts[2]["token_address"]) == 1, "the later part is untouched"
    fhir = await flow.client(DOCTOR).get(f"/api/therapies/{therapy['therapy_id']}/fhir")
    assert [r["dispenseRequest"]["validityPeriod"]["start"] for r in fhir] == [
        today.isoformat(), today.isoformat(), (today + dt.timedelta(days=10)).isoformat()]
    assert {r["groupIdentifier"]["value"] for r in fhir} == {therapy["therapy_id"]}


async def paper_prescription(flow: Scenario, **order) -> tuple[str, str, bytes]:
    """A printed prescription: its id, the pickup code read back out of the PDF's QR code, the PDF."""
    status, pdf, headers = await raw_post(flow, DOCTOR, "/api/prescriptions/paper",
                                          json_body={"order": sample_order(**order)})
    assert status == 201 and headers["Content-Type"] == "application/pdf", pdf[:300]
    (code,) = codes_in_upload(pdf, "application/pdf")
    return headers["Erx-Prescription-Ids"], code, pdf


def re_signed(jws: str, change) -> str:
    """The code's header and signature over a payload changed by `change`."""
    header, payload, signature = jws.split(".")
    body = json.loads(signed.b64url_decode(payload, "payload"))
    change(body)
    return ".".join([header, signed.b64url_encode(json.dumps(body).encode()), signature])


async def test_a_paper_prescription_is_redeemed_once_and_refused_the_second_time(network: Network, flow: Scenario):
    prescription_id, code, pdf = await paper_prescription(flow, redemptions=1)
    record = await flow.client(DOCTOR).get(f"/api/prescriptions/{prescription_id}")
    assert record["channel"] == "paper" and record["state"] == "issued" and record["connection_id"] == ""
    # the pharmacy scans the printed page (the PDF itself here)
    status, body, _ = await raw_post(flow, PHARMACY_A, "/api/pickup-codes/scan", data=pdf,
                                     content_type="application/pdf")
    check = json.loads(body)
    assert status == 201 and check["state"] == "verified" and check["channel"] == "paper", check
    assert check["prescription"]["prescription_id"] == prescription_id and "token" not in check["prescription"]
    dispensed = await flow.client(PHARMACY_A).post(f"/api/checks/{check['check_id']}/dispense")
    assert dispensed["state"] == "dispensed" and dispensed["remaining_redemptions"] == 0
    again = await flow.client(PHARMACY_B).post("/api/pickup-codes", {"code": code})
    assert again["state"] == "refused" and again["refusal"]["reason"] == "already_redeemed", again


async def test_forged_paper_prescriptions_are_refused_and_leave_the_token_alone(network: Network, flow: Scenario):
    prescription_id, code, _ = await paper_prescription(flow, redemptions=2)
    _, other, _ = await paper_prescription(flow)
    token = (await flow.client(DOCTOR).get(f"/api/prescriptions/{prescription_id}"))["token_address"]
    jws = paper.parse_pickup_code(code)

    edited = re_signed(jws, lambda body: body.update(qty=100))  # more tablets, same signature
    copied = ".".join(paper.parse_pickup_code(other).split(".")[:2] + [jws.split(".")[2]])  # a signature moved
    async with network.admin(PHARMACY_B) as admin:  # a DID on the ledger that is no prescriber signs a copy
        did = (await admin.public_did()).did
        header, payload, _ = jws.split(".")
        body = json.loads(signed.b64url_decode(payload, "payload")) | {"iss": did}
        other_signer = await admin.sign_jws(did, body, typ=paper.TYP)
    verdicts = {}
    for name, forged in (("edited", edited), ("copied", copied), ("other signer", other_signer)):
        check = await flow.client(PHARMACY_A).post("/api/pickup-codes", {"code": paper.PREFIX + forged})
        verdicts[name] = (check["state"], check["refusal"]["reason"], check["prescription"] is None)
    assert verdicts == {"edited": ("refused", "invalid_presentation", True),
                        "copied": ("refused", "invalid_presentation", True),
                        "other signer": ("refused", "untrusted_issuer", True)}
    with pytest.raises(ControllerApiError) as err:  # no pickup code at all
        await flow.client(PHARMACY_A).post("/api/pickup-codes", {"code": "ERX1:not-a-code"})
    assert err.value.status == 422
    assert await remaining(network, token) == 2, "no forgery touched the token"


async def test_a_representative_collects_with_the_pickup_code_from_the_patients_wallet(network: Network,
                                                                                      flow: Scenario):
    prescription = await flow.issue(DOCTOR, flow.connection_id, sample_order(redemptions=1))
    assert prescription["state"] == "issued", prescription
    credential_id = await flow.credential_for(PATIENT, prescription["prescription_id"])
    handed = await flow.client(PATIENT).get(f"/api/credentials/{credential_id}/pickup-code")
    check = await flow.client(PHARMACY_B).post("/api/pickup-codes", {"code": handed["pickup_code"]})
    assert check["state"] == "verified" and check["channel"] == "representative", check
    assert check["prescription"]["prescription_id"] == prescription["prescription_id"]
    dispensed = await flow.client(PHARMACY_B).post(f"/api/checks/{check['check_id']}/dispense")
    assert dispensed["state"] == "dispensed"
    # the patient's own wallet now finds the prescription used: a token spent anywhere is refused everywhere
    later = await flow.redeem(PHARMACY_A, PATIENT, credential_id)
    assert later["state"] == "refused" and later["refusal"]["reason"] == "already_redeemed", later
