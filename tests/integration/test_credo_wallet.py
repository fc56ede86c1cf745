"""A second, real wallet stack as the patient: Credo-TS 0.5.19 (what BC Wallet is built on).

The organisations' side runs exactly as in production (controllers → ACA-Py agents → Indy pool, EVM
chain), driven through their REST APIs with their operator tokens. The patient is a Credo agent
(`agents/credo-wallet/`), a native Node.js process started by the project's process manager, which
decides on its own what a wallet decides: DID Exchange, which credential answers a request (Credo's
automatic selection, which skips credentials it finds revoked), acknowledging credentials, recording
revocation notifications. Only a user's accept/decline is set from here (the wallet's mode).

Each group of tests has its own wallet, so the tests do not depend on each other's order:
`patient` (connect, hold, present), `revoked_wallet` (holds one prescription, then revoked) and
`decliner` (holds one valid prescription, then declines).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from erx_cli.credo_wallet import (CredoCredential, CredoInstall, CredoWallet, CredoWalletClient,
                                     ensure_credo_wallet)
from erx_cli.system import LocalSystem as Network
from erx_roles.scenario import WAIT_S, Scenario, sample_order
from erx_schemas.prescription import yyyymmdd

pytestmark = pytest.mark.integration

DOCTOR, PHARMACY = "doctor", "pharmacy"


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def credo_install() -> CredoInstall:
    """npm packages and native libraries, installed on first use (a fresh machine installs from scratch)."""
    return await asyncio.to_thread(ensure_credo_wallet)


@pytest.fixture(scope="module")
async def scenario(network: Network) -> AsyncIterator[Scenario]:
    s = Scenario(network)
    s.cred_def_id = await s.onboard(DOCTOR, [PHARMACY])
    yield s
    await s.close()


class Wallets:
    """Starts Credo wallets through the network's process manager; stops every one it started."""

    def __init__(self, network: Network, install: CredoInstall):
        self.network, self.install = network, install
        self.started: list[tuple[CredoWallet, CredoWalletClient]] = []

    async def start(self, name: str, label: str) -> tuple[CredoWallet, CredoWalletClient]:
        wallet = CredoWallet.for_network(self.network, name, label)
        shutil.rmtree(wallet.data_dir, ignore_errors=True)  # a new wallet, holding nothing yet
        client = await wallet.start(self.network.supervisor, self.install)
        self.started.append((wallet, client))
        return wallet, client

    async def stop_all(self) -> None:
        for wallet, client in reversed(self.started):
            await client.close()
            wallet.stop(self.network.supervisor)


@pytest.fixture(scope="module")
async def wallets(network: Network, credo_install: CredoInstall) -> AsyncIterator[Wallets]:
    started = Wallets(network, credo_install)
    try:
        yield started
    finally:
        await started.stop_all()


@dataclass
class Connected:
    invitation_id: str
    org_connection_id: str  # the organisation's side (ACA-Py)
    wallet_connection_id: str  # the wallet's side (Credo)
    link: str  # what the wallet opened
    short: bool  # whether that was the short link


def link_of(answer: dict) -> tuple[str, bool]:
    """What the wallet opens from an invitation answer (POST /api/invitations, POST /api/checks).

    `short_url` (an RFC 0434 short link, what the QR code carries) was added to these answers by
    another session: whenever the answer has it the wallet opens the short link, which Credo resolves
    with `Accept: application/json`; an answer without it falls back to the long `?oob=` URL."""
    if answer.get("short_url"):
        return answer["short_url"], True
    return answer["invitation_url"], False


async def connect(s: Scenario, organisation: str, wallet: CredoWalletClient) -> Connected:
    invitation = await s.client(organisation).post("/api/invitations")
    link, short = link_of(invitation)
    opened = await wallet.receive_invitation(link)
    assert opened.connection is not None, opened
    assert opened.connection.completed, f"the wallet's connection is {opened.connection.state}"
    org_side = await s.client(organisation).get(f"/api/invitations/{invitation['invitation_id']}/connection",
                                                wait=WAIT_S)
    return Connected(invitation_id=invitation["invitation_id"], org_connection_id=org_side["connection_id"],
                     wallet_connection_id=opened.connection.id, link=link, short=short)


async def settled(s: Scenario, prescription: dict, timeout_s: float = WAIT_S) -> dict:
    """The doctor's prescription once it is no longer `offered` (or as it is after `timeout_s`).

    The doctor's long poll (`GET /api/prescriptions/{id}?wait=`) returns on the agent's event, which
    can be before the controller has recorded the outcome: a decline first cancels the token on the
    chain (~1 block), and the poll then answers `offered`. So: ask again until it has moved."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while prescription["state"] == "offered" and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.25)
        prescription = await s.client(DOCTOR).get(f"/api/prescriptions/{prescription['prescription_id']}", wait=5)
    return prescription


@dataclass
class Holder:
    wallet: CredoWallet
    client: CredoWalletClient
    doctor: Connected


async def new_holder(s: Scenario, wallets: Wallets, name: str, label: str) -> Holder:
    wallet, client = await wallets.start(name, label)
    return Holder(wallet=wallet, client=client, doctor=await connect(s, DOCTOR, client))


async def issue_held(s: Scenario, holder: Holder, **order) -> tuple[dict, CredoCredential]:
    """The doctor issues a prescription; returns the doctor's record and the wallet's credential."""
    prescription = await settled(s, await s.issue(DOCTOR, holder.doctor.org_connection_id, sample_order(**order)))
    assert prescription["state"] == "issued", prescription
    held = await holder.client.wait_credential(
        lambda c: c.state == "done" and c.attributes.get("prescription_id") == prescription["prescription_id"])
    assert held is not None, (f"the Credo wallet does not hold prescription {prescription['prescription_id']}; "
                              f"its log:\n{holder.wallet.log_tail()}")
    return prescription, held


@pytest.fixture(scope="module")
async def patient(scenario: Scenario, wallets: Wallets) -> Holder:
    return await new_holder(scenario, wallets, "patient", "Credo patient")


async def qr_check(s: Scenario, client: CredoWalletClient) -> dict:
    """The pharmacy shows a QR code (a connectionless request); the wallet opens it; the check's outcome."""
    check = await s.client(PHARMACY).post("/api/checks", {})
    link, _ = link_of(check)
    opened = await client.receive_invitation(link)
    assert opened.connection is None, "a QR check is connectionless"
    return await s.client(PHARMACY).get(f"/api/checks/{check['check_id']}", wait=WAIT_S)


async def dispense(s: Scenario, check: dict) -> dict:
    return await s.client(PHARMACY).post(f"/api/checks/{check['check_id']}/dispense")


# -- connecting, holding, presenting --------------------------------------------------------------
async def test_connects_to_the_doctor_by_invitation(network: Network, scenario: Scenario, patient: Holder):
    connections = {c.id: c for c in await patient.client.connections()}
    mine = connections[patient.doctor.wallet_connection_id]
    assert mine.state == "completed"
    assert mine.their_label == network.settings.agent(DOCTOR).label
    doctor_side = await scenario.client(DOCTOR).get(f"/api/invitations/{patient.doctor.invitation_id}/connection")
    assert doctor_side["connection_id"] == patient.doctor.org_connection_id
    assert doctor_side["state"] in ("active", "completed")
    if patient.doctor.short:  # the doctor answered with a short link: the wallet resolved it (JSON by Accept)
        assert "oob=" not in patient.doctor.link


async def test_issued_prescription_is_held_with_its_attributes(network: Network, scenario: Scenario,
                                                               patient: Holder):
    order = sample_order(patient_name="Credo Holder", quantity=30)
    prescription, held = await issue_held(scenario, patient, patient_name="Credo Holder", quantity=30)
    assert held.thread_id == prescription["thread_id"]
    assert held.connection_id == patient.doctor.wallet_connection_id
    assert held.cred_def_id == scenario.cred_def_id
    assert held.schema_id == network.prescription_schema_id
    assert (held.rev_reg_id, held.cred_rev_id) == (prescription["rev_reg_id"], prescription["cred_rev_id"])
    a = held.attributes
    assert a["prescription_id"] == prescription["prescription_id"]
    assert a["patient_name"] == "Credo Holder"
    assert a["patient_birth_date"] == str(yyyymmdd(dt.date.fromisoformat(order["patient_birth_date"])))
    assert (a["medication_name"], a["medication_code"], a["medication_code_system"]) == ("Ibuprofen", "M01AE01", "ATC")
    assert a["quantity"] == "30" and a["redemptions"] == "1"
    assert a["valid_until"] == str(yyyymmdd(dt.date.fromisoformat(order["valid_until"])))
    assert a["token_secret_key"].startswith("0x") and a["token_contract"].startswith("0x")
    assert held.revoked is False and held.answer and held.answer.action == "accepted"


async def test_qr_check_is_verified_and_dispensed(scenario: Scenario, patient: Holder):
    prescription, held = await issue_held(scenario, patient)
    check = await qr_check(scenario, patient.client)
    assert check["state"] == "verified", check
    # Credo chose the credential itself: the newest one that is not revoked
    assert check["prescription"]["prescription_id"] == prescription["prescription_id"]
    assert check["cred_def_id"] == scenario.cred_def_id
    proof = await patient.client.wait_proof(
        lambda p: p.state in ("presentation-sent", "done") and p.connection_id is None, timeout_s=5)
    assert proof is not None and proof.answer and proof.answer.action == "presented"
    assert proof.answer.credential_ids == [held.credential_id]
    done = await dispense(scenario, check)
    assert done["state"] == "dispensed", done
    assert done["remaining_redemptions"] == 0 and done["spend_tx_hash"].startswith("0x")


async def test_check_over_a_connection_is_verified_and_dispensed(scenario: Scenario, patient: Holder):
    pharmacy = await connect(scenario, PHARMACY, patient.client)
    prescription, _ = await issue_held(scenario, patient)
    created = await scenario.client(PHARMACY).post("/api/checks", {"connection_id": pharmacy.org_connection_id})
    check = await scenario.client(PHARMACY).get(f"/api/checks/{created['check_id']}", wait=WAIT_S)
    assert check["state"] == "verified", check
    assert check["prescription"]["prescription_id"] == prescription["prescription_id"]
    proof = await patient.client.wait_proof(lambda p: p.connection_id == pharmacy.wallet_connection_id, timeout_s=5)
    assert proof is not None and proof.answer and proof.answer.action == "presented", proof
    done = await dispense(scenario, check)
    assert done["state"] == "dispensed", done


# -- revoked: notification, then nothing valid to present -------------------------------------------
@dataclass
class Revoked:
    holder: Holder
    prescription: dict
    held: CredoCredential


@pytest.fixture(scope="module")
async def revoked_wallet(scenario: Scenario, wallets: Wallets) -> Revoked:
    """A wallet that holds exactly one prescription, which its doctor has revoked."""
    holder = await new_holder(scenario, wallets, "revoked", "Credo patient (revoked)")
    prescription, held = await issue_held(scenario, holder)
    revoked = await scenario.revoke(DOCTOR, prescription["prescription_id"])
    assert revoked["state"] == "revoked", revoked
    return Revoked(holder=holder, prescription=prescription, held=held)


async def test_revocation_notification_marks_the_credential_revoked(revoked_wallet: Revoked):
    """The doctor's revocation notifies the wallet; Credo records it on the credential exchange.

    Credo 0.5 accepts revocation notification 2.0, or 1.0 only with the thread id
    `indy::<rev_reg_id>::<cred_rev_id>`; a 1.0 notice carrying the issue exchange's thread id is dropped
    with "Incorrect revocation notification threadId format" (see the wallet's log)."""
    holder = revoked_wallet.holder
    marked = await holder.client.wait_credential(lambda c: c.id == revoked_wallet.held.id and c.revoked, timeout_s=20)
    assert marked is not None, ("the Credo wallet did not record a revocation notification; its log:\n"
                                + "\n".join(line for line in holder.wallet.log_tail(200).splitlines()
                                            if "revocation" in line.lower())[-3000:])
    assert marked.revocation_notification is not None and marked.revocation_notification.received_at is not None


async def test_only_a_revoked_prescription_held_is_refused_as_no_matching_credential(scenario: Scenario,
                                                                                     revoked_wallet: Revoked):
    """Credo's selection skips the revoked credential (it checks the ledger's revocation list itself),
    finds nothing else and answers with a problem report instead of a presentation."""
    holder = revoked_wallet.holder
    check = await qr_check(scenario, holder.client)
    proof = await holder.client.wait_proof(lambda p: p.answer is not None and p.connection_id is None, timeout_s=10)
    assert proof is not None, f"the wallet did not answer the request; its log:\n{holder.wallet.log_tail()}"
    assert proof.answer.action == "no_matching_credential", proof
    assert "Unable to automatically select requested attributes" in (proof.answer.problem_report or ""), proof
    assert check["state"] == "refused", check
    print(f"pharmacy's refusal when only a revoked prescription is held: {check['refusal']}")
    # What is wanted: a refusal that says the wallet holds no valid prescription for the request, with the
    # wallet's words in the detail (not a bare `invalid_presentation`).
    assert check["refusal"]["reason"] == "no_matching_credential", check["refusal"]
    assert "Unable to automatically select requested attributes" in check["refusal"]["detail"], check["refusal"]


# -- declining ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def decliner(scenario: Scenario, wallets: Wallets) -> Holder:
    """A wallet that holds one valid prescription; each test sets what its user decides."""
    holder = await new_holder(scenario, wallets, "decliner", "Credo patient (declining)")
    await holder.client.set_mode(offers="accept", proofs="accept")
    await issue_held(scenario, holder)
    return holder


async def test_declined_offer_ends_declined_at_the_doctor(scenario: Scenario, decliner: Holder):
    await decliner.client.set_mode(offers="decline", proofs="accept")
    prescription = await scenario.issue(DOCTOR, decliner.doctor.org_connection_id, sample_order())
    prescription = await settled(scenario, prescription)  # see settled(): the long poll can answer early
    assert prescription["state"] == "declined", prescription
    offer = await decliner.client.wait_credential(
        lambda c: c.attributes.get("prescription_id") == prescription["prescription_id"], timeout_s=5)
    assert offer is not None, f"the wallet has no record of the offer: {await decliner.client.credentials()}"
    assert offer.state == "declined" and offer.answer and offer.answer.action == "declined", offer
    assert offer.cred_def_id == scenario.cred_def_id and offer.credential_id is None
    print(f"doctor's record of the declined offer: error={prescription['error']!r}")
    # the token may still have been on its way into a block when the wallet declined: it is cancelled
    # once mined (the issuance pipeline does not hold the offer for the token's block)
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while prescription["token_cancelled"] is not True and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.5)
        prescription = await scenario.client(DOCTOR).get(f"/api/prescriptions/{prescription['prescription_id']}")
    assert prescription["token_cancelled"] is True, "a declined prescription's token is cancelled"


async def test_declined_proof_request_is_refused_as_declined(scenario: Scenario, decliner: Holder):
    await decliner.client.set_mode(offers="accept", proofs="decline")
    check = await qr_check(scenario, decliner.client)
    proof = await decliner.client.wait_proof(lambda p: p.answer is not None and p.answer.action == "declined",
                                             timeout_s=10)
    assert proof is not None and proof.state == "declined", proof
    assert check["state"] == "refused", check
    print(f"pharmacy's refusal when the patient declines: {check['refusal']}")
    assert check["refusal"]["reason"] == "declined", check["refusal"]
