"""Integrators on the real network: REST API with per-integrator tokens, signed webhooks from a
durable outbox, FHIR R4 in and out, and the OpenAPI documents fuzzed by schemathesis.

Only the doctor's and the pharmacy's REST APIs (and the patient's wallet stand-in) are used here,
as practice software and a pharmacy system would use them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from fhir.resources.R4B.medicationdispense import MedicationDispense
from fhir.resources.R4B.medicationrequest import MedicationRequest
from pydantic import SecretStr

from erx_cli.system import LocalSystem as Network
from erx_roles.client import ControllerApiError, ControllerClient
from erx_roles.scenario import Scenario, sample_order
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

DOCTOR, PATIENT, PHARMACY = "doctor", "patient", "pharmacy"
WAIT_S = 30
FIXTURES = Path(__file__).parent.parent / "fixtures"


class Integrator:
    """One integrator's view: its own token for one organisation's controller; `staff` acts for the
    organisation's dev person (a prescriber, a pharmacist) as practice software does for its user."""

    def __init__(self, network: Network, organisation: str, created: dict):
        self.id, self.token = created["integrator_id"], created["token"]
        self.url = network.controller_url(organisation)
        self.client = ControllerClient(self.url, SecretStr(self.token))
        self.person = network.staff_member(organisation)
        self.staff = ControllerClient(self.url, SecretStr(self.token), on_behalf_of=self.person)

    async def close(self) -> None:
        await self.client.close()
        await self.staff.close()


@pytest.fixture(scope="module")
async def operator(network: Network):
    s = Scenario(network, as_staff=False)  # the organisations' operator tokens (as `erx integrator` uses them)
    yield s
    await s.close()


async def new_integrator(network: Network, operator: Scenario, organisation: str, name: str,
                         scopes: tuple[str, ...] = ()) -> Integrator:
    created = await operator.client(organisation).post("/api/integrators", {"name": name, "scopes": list(scopes)})
    return Integrator(network, organisation, created)


@pytest.fixture(scope="module")
async def practice(network: Network, operator: Scenario):
    integrator = await new_integrator(network, operator, DOCTOR, "Practice software")
    yield integrator
    await integrator.close()


@pytest.fixture(scope="module")
async def pharmacy_system(network: Network, operator: Scenario):
    # the pharmacy chain's system keeps its trust list: it holds the trust-list scope
    integrator = await new_integrator(network, operator, PHARMACY, "Pharmacy system", scopes=("trust-list",))
    yield integrator
    await integrator.close()


@pytest.fixture(scope="module")
async def wallet(network: Network, operator: Scenario):
    return operator.client(PATIENT)


@pytest.fixture(scope="module")
async def connected(practice: Integrator, pharmacy_system: Integrator, wallet: ControllerClient) -> str:
    """The patient's wallet connected to the practice, and the practice trusted by the pharmacy:
    all through the integrators' REST APIs. Returns the practice's connection id."""
    cred_def_id = (await practice.client.get("/api/status"))["cred_def_id"]
    await pharmacy_system.client.post("/api/trusted-prescribers", {"cred_def_id": cred_def_id, "label": "practice"})
    invitation = await practice.client.post("/api/invitations")
    await wallet.post("/api/invitations", {"invitation_url": invitation["invitation_url"]})
    connection = await practice.client.get(f"/api/invitations/{invitation['invitation_id']}/connection",
                                           wait=WAIT_S)
    return connection["connection_id"]


@pytest.fixture
async def receiver():
    r = await WebhookReceiver().start()
    yield r
    await r.close()


async def subscribe(integrator: Integrator, receiver: WebhookReceiver, name: str, events: list[str] = ()) -> dict:
    created = await integrator.client.post("/api/webhooks", {"url": receiver.url(name), "events": list(events)})
    receiver.secrets[name] = created["secret"]
    return created


async def last_seq(integrator: Integrator) -> int:
    seq = 0
    while batch := await integrator.client.get("/api/events", after_seq=seq, limit=1000):
        seq = batch[-1]["seq"]
    return seq


async def present_and_dispense(pharmacy_system: Integrator, wallet: ControllerClient, credential_id: str) -> dict:
    check = await pharmacy_system.client.post("/api/checks", {})
    await wallet.post("/api/invitations", {"invitation_url": check["invitation_url"], "credential_id": credential_id})
    check = await pharmacy_system.client.get(f"/api/checks/{check['check_id']}", wait=WAIT_S)
    assert check["state"] == "verified", check
    return await pharmacy_system.staff.post(f"/api/checks/{check['check_id']}/dispense")


async def secret_key_in_wallet(network: Network, credential_id: str) -> str:
    """The token's secret key as the patient's wallet holds it (its own API never shows it)."""
    admin = network.admin(PATIENT)
    try:
        return (await admin.credential(credential_id)).attrs["token_secret_key"]
    finally:
        await admin.close()


async def held_credential(wallet: ControllerClient, prescription_id: str) -> dict:
    held = await wallet.get("/api/credentials", prescription_id=prescription_id)
    assert len(held) == 1, held
    return held[0]


def fhir_request_valid_today() -> dict:
    """The example MedicationRequest, valid from today for four weeks (so that pharmacies accept it)."""
    resource = json.loads((FIXTURES / "fhir" / "medication-request-ibuprofen.json").read_text())
    today = dt.date.today()
    resource["dispenseRequest"]["validityPeriod"] = {"start": today.isoformat(),
                                                     "end": (today + dt.timedelta(days=28)).isoformat()}
    return resource


# -- the flow, through the REST API alone, followed by webhooks ------------------------------------------
async def test_full_flow_through_the_rest_api_with_signed_webhooks(
        network: Network, practice: Integrator, pharmacy_system: Integrator, wallet: ControllerClient,
        connected: str, receiver: WebhookReceiver):
    await subscribe(practice, receiver, "practice")
    await subscribe(pharmacy_system, receiver, "pharmacy")
    await subscribe(pharmacy_system, receiver, "pharmacy-refusals", ["prescription.refused"])

    created = await practice.staff.post("/api/prescriptions", {"connection_id": connected,
                                                               "order": sample_order(redemptions=1)})
    assert created["state"] == "offered"
    pid = created["prescription_id"]
    issued = await practice.client.get(f"/api/prescriptions/{pid}", wait=WAIT_S)
    assert issued["state"] == "issued" and issued["remaining_redemptions"] == 1
    credential = await held_credential(wallet, pid)

    dispensed = await present_and_dispense(pharmacy_system, wallet, credential["credential_id"])
    assert dispensed["state"] == "dispensed" and dispensed["remaining_redemptions"] == 0
    # the same prescription again: the chain refuses, and the pharmacy says why
    check = await pharmacy_system.client.post("/api/checks", {})
    await wallet.post("/api/invitations", {"invitation_url": check["invitation_url"],
                                           "credential_id": credential["credential_id"]})
    again = await pharmacy_system.client.get(f"/api/checks/{check['check_id']}", wait=WAIT_S)
    assert again["state"] == "refused" and again["refusal"]["reason"] == "already_redeemed"
    history = await pharmacy_system.client.get("/api/checks", limit=2)
    assert [c["check_id"] for c in history["items"]] == [again["check_id"], dispensed["check_id"]]

    await receiver.until(lambda r: len(r.of("practice")) >= 2 and len(r.of("pharmacy")) >= 3
                         and len(r.of("pharmacy-refusals")) >= 1)
    practice_events = [e for e in receiver.of("practice") if e["data"]["prescription"]["prescription_id"] == pid]
    assert [e["type"] for e in practice_events] == ["prescription.offered", "prescription.issued"]
    pharmacy_events = [(e["type"], e["data"]["check"]["check_id"]) for e in receiver.of("pharmacy")]
    assert pharmacy_events[-3:] == [("prescription.presented", dispensed["check_id"]),
                                    ("prescription.dispensed", dispensed["check_id"]),
                                    ("prescription.refused", again["check_id"])]
    refused = receiver.of("pharmacy-refusals")
    assert [e["type"] for e in refused] == ["prescription.refused"] and refused[0]["data"]["reason"] == \
        "already_redeemed"
    assert receiver.bad_signatures == 0

    # no event, delivered or logged, carries the token's secret key
    secret_key = await secret_key_in_wallet(network, credential["credential_id"])
    assert secret_key.startswith("0x") and len(secret_key) == 66
    everything = json.dumps(receiver.events) + json.dumps(await practice.client.get("/api/events", limit=1000)) + \
        json.dumps(await pharmacy_system.client.get("/api/events", limit=1000))
    assert secret_key.lower() not in everything.lower() and secret_key[2:].lower() not in everything.lower()
    assert "token_secret_key" not in everything and "spend_raw_tx" not in everything


async def test_fhir_round_trip(network: Network, practice: Integrator, pharmacy_system: Integrator,
                               wallet: ControllerClient, connected: str):
    """MedicationRequest in → credential → presentation → MedicationDispense out."""
    medication_request = fhir_request_valid_today()
    MedicationRequest.model_validate(medication_request)
    created = await practice.staff.post("/api/prescriptions/fhir", {"connection_id": connected,
                                                                    "medication_request": medication_request})
    pid = created["prescription_id"]
    assert (await practice.client.get(f"/api/prescriptions/{pid}", wait=WAIT_S))["state"] == "issued"
    credential = await held_credential(wallet, pid)
    assert credential["attributes"]["medication_code"] == "M01AE01"  # the ATC coding of the contained Medication
    assert credential["attributes"]["redemptions"] == "2"  # one repeat allowed

    as_fhir = await practice.client.get(f"/api/prescriptions/{pid}/fhir")
    MedicationRequest.model_validate(as_fhir)

    dispensed = await present_and_dispense(pharmacy_system, wallet, credential["credential_id"])
    assert dispensed["state"] == "dispensed"
    dispense = await pharmacy_system.client.get(f"/api/checks/{dispensed['check_id']}/fhir")
    resource = MedicationDispense.model_validate(dispense)
    assert resource.status == "completed"
    assert any(c.code == "M01AE01" for c in resource.medicationCodeableConcept.coding)
    assert dispensed["spend_tx_hash"] in json.dumps(dispense)
    assert pid in json.dumps(dispense)
    secret_key = await secret_key_in_wallet(network, credential["credential_id"])
    assert secret_key[2:].lower() not in json.dumps(dispense).lower()

    # a MedicationDispense only exists for a dispensed check
    check = await pharmacy_system.client.post("/api/checks", {})
    with pytest.raises(ControllerApiError) as refused:
        await pharmacy_system.client.get(f"/api/checks/{check['check_id']}/fhir")
    assert refused.value.status == 409


async def test_unmappable_medication_request_is_refused_naming_the_element(practice: Integrator, connected: str):
    medication_request = fhir_request_valid_today()
    del medication_request["dispenseRequest"]["quantity"]
    with pytest.raises(ControllerApiError) as refused:
        await practice.staff.post("/api/prescriptions/fhir", {"connection_id": connected,
                                                              "medication_request": medication_request})
    assert refused.value.status == 422
    assert any("quantity" in f["field"] for f in refused.value.body["fields"]), refused.value.body
    with pytest.raises(ControllerApiError) as refused:
        await practice.staff.post("/api/prescriptions/fhir", {"connection_id": connected,
                                                              "medication_request": {"resourceType": "Patient"}})
    assert refused.value.status == 422


# -- people -------------------------------------------------------------------------------------------------
async def test_people_act_through_the_api_and_the_audit_log_names_who_did_what(
        network: Network, operator: Scenario, practice: Integrator, pharmacy_system: Integrator,
        wallet: ControllerClient, connected: str):
    """Issuing, revoking and dispensing need a person: an integrator names one (`Erx-On-Behalf-Of`), or a
    staff member uses their own token. The audit log says who, through what, on which prescription."""
    order = {"connection_id": connected, "order": sample_order()}
    with pytest.raises(ControllerApiError) as refused:
        await practice.client.post("/api/prescriptions", order)
    assert refused.value.status == 403 and "Erx-On-Behalf-Of" in refused.value.body["error"]
    pid = (await practice.staff.post("/api/prescriptions", order))["prescription_id"]
    assert (await practice.client.get(f"/api/prescriptions/{pid}", wait=WAIT_S))["state"] == "issued"
    credential = await held_credential(wallet, pid)
    with pytest.raises(ControllerApiError) as refused:  # the pharmacy's software, acting for nobody
        check = await pharmacy_system.client.post("/api/checks", {})
        await pharmacy_system.client.post(f"/api/checks/{check['check_id']}/dispense")
    assert refused.value.status == 403
    dispensed = await present_and_dispense(pharmacy_system, wallet, credential["credential_id"])
    assert dispensed["state"] == "dispensed"

    # the prescriber's own token: revokes another prescription; may not administer
    own = (await operator.client(DOCTOR).post(f"/api/staff/{practice.person}/token"))["token"]
    async with ControllerClient(practice.url, SecretStr(own)) as mine:
        other = (await mine.post("/api/prescriptions", order))["prescription_id"]
        assert (await mine.get(f"/api/prescriptions/{other}", wait=WAIT_S))["state"] == "issued"
        assert (await mine.post(f"/api/prescriptions/{other}/revoke"))["state"] == "revoked"
        with pytest.raises(ControllerApiError) as refused:
            await mine.get("/api/audit")
        assert refused.value.status == 403

    practice_log = await operator.client(DOCTOR).every_page("/api/audit")
    about = [(e["action"], e["username"], e["via"], e["outcome"]) for e in practice_log
             if e["prescription_id"] in (pid, other)]
    assert ("issued", practice.person, "integrator", "ok") in about
    assert ("issued", practice.person, "staff-token", "ok") in about
    assert ("revoked", practice.person, "staff-token", "ok") in about
    assert any(e["action"] == "issued" and e["username"] is None and e["outcome"] == "refused"
               and e["integrator_id"] == practice.id for e in practice_log)
    pharmacy_log = await operator.client(PHARMACY).every_page("/api/audit")
    done = [e for e in pharmacy_log if e["action"] == "dispensed" and e["check_id"] == dispensed["check_id"]]
    assert [(e["username"], e["role"], e["via"], e["outcome"], e["prescription_id"]) for e in done] == \
        [(pharmacy_system.person, "pharmacist", "integrator", "ok", pid)]
    exported = ""
    for organisation in (DOCTOR, PHARMACY):
        for fmt in ("csv", "jsonl"):
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{network.controller_url(organisation)}/api/audit/export",
                                    params={"format": fmt}, headers={"Authorization": "Bearer "
                                    + network.operator_token(organisation).get_secret_value()}) as resp:
                    assert resp.status == 200
                    exported += await resp.text()
    secret_key = await secret_key_in_wallet(network, credential["credential_id"])
    for secret in (secret_key, secret_key[2:], own, practice.token, pharmacy_system.token):
        assert secret.lower() not in exported.lower()
    assert pid in exported and dispensed["check_id"] in exported


# -- tokens ----------------------------------------------------------------------------------------------
async def test_requests_need_a_valid_integrator_token(network: Network, operator: Scenario, practice: Integrator,
                                                      receiver: WebhookReceiver):
    url = network.controller_url(DOCTOR)
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer erx_not-a-token"}, {"Authorization": practice.token}):
            async with http.get(f"{url}/api/prescriptions", headers=headers) as resp:
                assert resp.status == 401, headers
                assert "token" in (await resp.json())["error"]
        async with http.get(f"{url}/api/openapi.json") as resp:  # the description itself is public
            assert resp.status == 200

    # an integrator cannot mint or list tokens; the operator can
    with pytest.raises(ControllerApiError) as refused:
        await practice.client.post("/api/integrators", {"name": "sneaky"})
    assert refused.value.status == 403

    # the trust list is read by any pharmacy integrator, changed only with the trust-list scope
    till = await new_integrator(network, operator, PHARMACY, "Till software")
    try:
        listed = await till.client.get("/api/trusted-prescribers")
        with pytest.raises(ControllerApiError) as refused:
            await till.client.post("/api/trusted-prescribers",
                                   {"cred_def_id": "Th7MpTaRZVRYnPiabds81Y:3:CL:12:rogue", "label": "rogue"})
        assert refused.value.status == 403 and "trust-list" in refused.value.body["error"]
        assert await till.client.get("/api/trusted-prescribers") == listed
    finally:
        await operator.client(PHARMACY).request("DELETE", f"/api/integrators/{till.id}")
        await till.close()

    # each integrator sees only its own subscriptions; revoking an integrator ends its token and its webhooks
    short_lived = await new_integrator(network, operator, DOCTOR, "Short-lived")
    try:
        mine = await subscribe(short_lived, receiver, "short-lived")
        assert [s["subscription_id"] for s in await short_lived.client.get("/api/webhooks")] == \
            [mine["subscription_id"]]
        assert "secret" not in (await short_lived.client.get("/api/webhooks"))[0]
        assert mine["subscription_id"] not in {s["subscription_id"] for s in await practice.client.get("/api/webhooks")}
        with pytest.raises(ControllerApiError) as hidden:
            await practice.client.request("DELETE", f"/api/webhooks/{mine['subscription_id']}")
        assert hidden.value.status == 404
        listed = await operator.client(DOCTOR).get("/api/integrators")
        assert short_lived.id in {i["integrator_id"] for i in listed} and "token" not in listed[0]

        await operator.client(DOCTOR).request("DELETE", f"/api/integrators/{short_lived.id}")
        with pytest.raises(ControllerApiError) as gone:
            await short_lived.client.get("/api/webhooks")
        assert gone.value.status == 401
        assert mine["subscription_id"] not in {s["subscription_id"]
                                               for s in await operator.client(DOCTOR).get("/api/webhooks")}
    finally:
        await short_lived.close()


# -- the OpenAPI documents ----------------------------------------------------------------------------------
async def test_status_lists_the_openapi_documents_and_they_describe_the_routes(network: Network):
    status = await network.status()
    assert set(status.api) >= {"doctor", "pharmacy"} and PATIENT not in status.api
    async with aiohttp.ClientSession() as http:
        for organisation, must_have in (("doctor", {("post", "/api/prescriptions"), ("post", "/api/prescriptions/fhir"),
                                                    ("post", "/api/prescriptions/{prescription_id}/revoke")}),
                                        ("pharmacy", {("post", "/api/checks"), ("post", "/api/checks/{check_id}/dispense"),
                                                      ("get", "/api/checks/{check_id}/fhir"),
                                                      ("get", "/api/trusted-prescribers")})):
            async with http.get(status.api[organisation]) as resp:
                document = await resp.json()
            assert document["openapi"].startswith("3.")
            operations = {(m, p) for p, ops in document["paths"].items() for m in ops}
            assert must_have | {("post", "/api/webhooks"), ("get", "/api/events"), ("post", "/api/integrators")} \
                <= operations
            issue = document["paths"].get("/api/prescriptions", {}).get("post") or \
                document["paths"]["/api/checks"]["post"]
            schema_ref = issue["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert schema_ref.split("/")[-1] in document["components"]["schemas"]


# -- durability -------------------------------------------------------------------------------------------
async def test_controller_restart_during_delivery_loses_no_event(
        network: Network, practice: Integrator, wallet: ControllerClient, connected: str,
        receiver: WebhookReceiver):
    """Deliveries are held in flight at the receiver while the controller is SIGKILLed; after the
    restart every event is delivered at least once, with no gap in the sequence."""
    before = await last_seq(practice)
    await subscribe(practice, receiver, "restart")
    receiver.held.clear()  # deliveries arrive but get no answer yet
    pids = []
    for _ in range(2):
        created = await practice.staff.post("/api/prescriptions", {"connection_id": connected,
                                                                   "order": sample_order()})
        pids.append(created["prescription_id"])
    for pid in pids:
        assert (await practice.client.get(f"/api/prescriptions/{pid}", wait=WAIT_S))["state"] == "issued"
    events = await practice.client.get("/api/events", after_seq=before, limit=1000)
    assert len(events) >= 4
    await receiver.until(lambda r: r.in_flight > 0)
    assert receiver.of("restart") == []  # nothing acknowledged yet

    os.kill(network.supervisor.record(f"controller-{DOCTOR}").pid, signal.SIGKILL)
    await network.up()  # restarts the controller; its outbox resumes
    receiver.held.set()

    wanted = {e["id"] for e in events}
    await receiver.until(lambda r: wanted <= {e["id"] for e in r.of("restart")}, timeout_s=90)
    delivered = receiver.of("restart")
    seqs = [e["seq"] for e in delivered]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # no gap
    assert [e["type"] for e in delivered if e["id"] in wanted].count("prescription.issued") == 2
    assert receiver.bad_signatures == 0


async def test_presentation_arriving_while_the_pharmacy_controller_is_down_is_checked_after_restart(
        network: Network, practice: Integrator, pharmacy_system: Integrator, wallet: ControllerClient,
        connected: str):
    """The agent's webhook finds no controller; at start-up the controller settles the check from the
    agent's exchange record, and integrators get its event."""
    created = await practice.staff.post("/api/prescriptions", {"connection_id": connected, "order": sample_order()})
    assert (await practice.client.get(f"/api/prescriptions/{created['prescription_id']}", wait=WAIT_S))["state"] \
        == "issued"
    credential = await held_credential(wallet, created["prescription_id"])
    check = await pharmacy_system.client.post("/api/checks", {})
    before = await last_seq(pharmacy_system)

    os.kill(network.supervisor.record(f"controller-{PHARMACY}").pid, signal.SIGKILL)
    await wallet.post("/api/invitations", {"invitation_url": check["invitation_url"],
                                           "credential_id": credential["credential_id"]})
    admin = network.admin(PHARMACY)
    try:  # the presentation reached the pharmacy's agent, whose webhooks go nowhere now
        for _ in range(300):
            record = await admin.presentation_exchange(check["pres_ex_id"])
            if record.state == "presentation-received":
                break
            await asyncio.sleep(0.1)
        assert record.state == "presentation-received", record.state
    finally:
        await admin.close()
        await network.up()  # whatever happened: later tests need the controller back
    settled = await pharmacy_system.client.get(f"/api/checks/{check['check_id']}")
    assert settled["state"] == "verified", settled
    events = await pharmacy_system.client.get("/api/events", after_seq=before)
    assert [(e["type"], e["data"]["check"]["check_id"]) for e in events] == \
        [("prescription.presented", check["check_id"])]


# -- fuzzing (last: it changes shared state, e.g. the trust list, integrators, subscriptions) --------------
# The operator may do what no integrator may (manage integrators, change the trust list, see every
# webhook subscription): its run fuzzes those operations only, where its token changes what the
# controller does; everything else answers an operator as it answers an integrator and is fuzzed in
# the integrator's run. That keeps the operator's run to a fraction of the integrator's.
OPERATOR_PATHS = r"^/api/(integrators|trusted-prescribers|webhooks)"



async def shared_state(operator: Scenario, organisation: str) -> dict[str, dict[str, dict]]:
    """What the fuzzer may change and later tests rely on: trust list, integrators, subscriptions."""
    client = operator.client(organisation)
    state = {"trusted": {t["cred_def_id"]: t for t in await client.every_page("/api/trusted-prescribers")}
             if organisation != DOCTOR else {}}
    state["integrators"] = {i["integrator_id"]: i for i in await client.get("/api/integrators")}
    state["webhooks"] = {w["subscription_id"]: w for w in await client.get("/api/webhooks")}
    return state


async def restore(operator: Scenario, organisation: str, before: dict[str, dict[str, dict]]) -> list[str]:
    """Undo what the fuzzer (and its own integrator) left behind: prescribers it added or removed,
    integrators and webhook subscriptions it created. Returns what could not be undone."""
    client = operator.client(organisation)
    after = await shared_state(operator, organisation)
    left = []
    for kind, path in (("trusted", "/api/trusted-prescribers"), ("integrators", "/api/integrators"),
                       ("webhooks", "/api/webhooks")):
        for added in set(after[kind]) - set(before[kind]):
            try:
                await client.request("DELETE", f"{path}/{quote(added, safe='')}")
            except ControllerApiError as exc:
                if exc.status != 404:  # 404: e.g. a subscription that went with its integrator
                    left.append(f"DELETE {path}/{added!r} -> {exc.status}: {exc.body}")
    for cred_def_id, trusted in before["trusted"].items():  # removed, or its label overwritten
        if after["trusted"].get(cred_def_id) != trusted:
            await client.post("/api/trusted-prescribers", trusted)
    return left


@pytest.mark.parametrize("caller", ["integrator", "operator"])
@pytest.mark.parametrize("organisation", [DOCTOR, PHARMACY])
async def test_schemathesis_finds_no_server_error(network: Network, operator: Scenario, organisation: str,
                                                  caller: str, tmp_path: Path):
    """Property-based requests from the OpenAPI document, valid and invalid, against the running
    controller: none may answer 5xx, and every answer must match the documented status codes, content
    types and schemas. It runs as an integrator would, with its own token, and as the operator."""
    before = await shared_state(operator, organisation)
    if caller == "integrator":
        fuzzer = await new_integrator(network, operator, organisation, "schemathesis")
        await fuzzer.close()
        token, scope, least = fuzzer.token, [], 100
    else:
        token = network.operator_token(organisation).get_secret_value()
        scope, least = ["--include-path-regex", OPERATOR_PATHS], 50
    # the token reaches schemathesis through its environment, not argv; long polls are answered at once
    # (waiting is exercised by the flow tests; here it would only make each call last up to 60 s)
    config = '[headers]\nAuthorization = "Bearer ${ERX_FUZZ_TOKEN}"\n\n[parameters]\n"query.wait" = 0\n'
    if caller == "operator":
        # Schemathesis reuses values from earlier answers (the ids GET /api/integrators lists): the operator
        # would delete the integrators and subscriptions later tests hold, which cannot be made again with
        # their tokens. It fuzzes with generated ids only.
        config += "".join(f"\n[phases.{phase}.extra-data-sources]\nresponses = false\n"
                          for phase in ("examples", "coverage", "fuzzing"))
    (tmp_path / "schemathesis.toml").write_text(config)
    command = [sys.executable, "-m", "schemathesis.cli", "run", network.controller_url(organisation)
               + "/api/openapi.json", "--checks", "not_a_server_error,status_code_conformance,"
               "content_type_conformance,response_schema_conformance", "--max-examples", "25",
               "--phases", "examples,coverage,fuzzing", "--seed", "1", "--request-timeout", "70", "--no-color",
               *scope]
    try:
        proc = await asyncio.create_subprocess_exec(*command, cwd=tmp_path, stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT,
                                                    env={**os.environ, "ERX_FUZZ_TOKEN": token})
        output = (await asyncio.wait_for(proc.communicate(), 600))[0].decode(errors="replace")
    finally:  # later test modules share this network, its trust lists, integrators and subscriptions
        left = await restore(operator, organisation, before)
    assert proc.returncode == 0, output[-6000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated and int(generated[1]) == int(generated[2]) > least, output[-2000:]
    assert not left, f"what the fuzzer created cannot be removed through the API: {left}"
    after = await shared_state(operator, organisation)
    assert after["trusted"] == before["trusted"]
    assert (set(after["integrators"]), set(after["webhooks"])) == (set(before["integrators"]), set(before["webhooks"]))
