"""Signed dispense receipts without a network: the pharmacy signs one at dispense (a fake agent signing as
ACA-Py's `/wallet/jwt/sign` does, with a real Ed25519 key), records it on the check and in the
`prescription.dispensed` event, sends it to the wallet over the check's connection; a failed signing or
sending is retried by the housekeeping step, never failing the dispense; substitutions the rules refuse are
422s that leave the check dispensable; the public verify and the wallet accept a genuine receipt and refuse
an edited one, a stranger's, one that is no receipt."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import base58
import pytest
from nacl.signing import SigningKey

from erx_core.acapy_admin import AdminApiError, AgentUnreachable, PublicDid
from erx_core.events import EventBus
from erx_core.settings import CheckSettings
from erx_core.store import Store
from erx_core.webhooks import Outbox, WebhookSettings
from erx_roles.dispensing import Substitution
from erx_roles.errors import Conflict, InvalidRequest, Unavailable
from erx_roles.patient import PatientService
from erx_roles.pharmacy import CheckState, PharmacyService, StoredCheck
from erx_roles.pharmacy.models import AfterDispense
from erx_roles.receipts import MESSAGE_PREFIX, own_receipt, receipt_in_message
from erx_schemas import receipt as receipts
from erx_schemas import signed
from erx_schemas.prescription import Medication, Prescriber, PresentedPrescription, TherapyPart

TX = "0x" + "5d" * 32
KEY = "0x" + "a1" * 32
CONNECTION = "0b7e6a2c-5a1d-4c4e-9f00-2a6f3f1c9d10"
ID = "5f0c7a3e-1d2b-4c6a-9e8f-0a1b2c3d4e5f"
GENERIC = {"name": "Ibu-ratiopharm", "code": "01016144", "code_system": "PZN", "strength": "400 mg", "form": "tablet"}


class Agent:
    """The admin API calls the pharmacy (and the wallet) make, with a real key: `sign_jws` writes what
    ACA-Py 1.7 writes (header typ/alg/kid, `json.dumps` payload, Ed25519), `did_verkey` is the ledger."""

    def __init__(self, seed: bytes = b"p" * 32):
        self.key = SigningKey(seed)
        self.verkey = base58.b58encode(bytes(self.key.verify_key)).decode()
        self.did = base58.b58encode(bytes(self.key.verify_key)[:16]).decode()
        self.ledger: dict[str, str] = {self.did: self.verkey}
        self.sent: list[tuple[str, str]] = []
        self.deleted: list[str] = []
        self.sign_fails: Exception | None = None
        self.send_fails: Exception | None = None
        self.ledger_fails: Exception | None = None

    async def public_did(self) -> PublicDid:
        return PublicDid(did=self.did, verkey=self.verkey)

    async def sign_jws(self, did: str, payload: dict, *, typ: str | None = None) -> str:
        if self.sign_fails is not None:
            raise self.sign_fails
        return self.sign(did, payload, typ)

    def sign(self, did: str, payload: dict, typ: str | None) -> str:
        header = signed.b64url_encode(json.dumps({"typ": typ, "alg": "EdDSA", "kid": signed.did_url(did)}).encode())
        body = signed.b64url_encode(json.dumps(payload).encode())
        signature = self.key.sign(f"{header}.{body}".encode()).signature
        return f"{header}.{body}.{signed.b64url_encode(signature)}"

    async def did_verkey(self, did: str) -> str:
        if self.ledger_fails is not None:
            raise self.ledger_fails
        if did not in self.ledger:
            raise AdminApiError("GET", "/ledger/did-verkey", 404, "DID not found")
        return self.ledger[did]

    async def send_message(self, connection_id: str, content: str) -> None:
        if self.send_fails is not None:
            raise self.send_fails
        self.sent.append((connection_id, content))

    async def delete_presentation_exchange(self, pres_ex_id: str) -> None:
        self.deleted.append(pres_ex_id)


class Chain:
    async def spend(self, secret_key: str, *, journal, expected_remaining):
        assert secret_key == KEY
        await journal(TX, "0xf86c-raw")
        return SimpleNamespace(tx_hash=TX)


def prescribed(substitution_allowed: bool = True) -> dict:
    return PresentedPrescription(
        prescription_id=ID, patient_name="Erika Mustermann", patient_birth_date=dt.date(1964, 8, 12),
        medication=Medication(name="Ibuprofen", code="M01AE01", code_system="ATC", strength="400 mg", form="tablet"),
        dosage_instructions="1 tablet up to 3 times a day", quantity=20, substitution_allowed=substitution_allowed,
        prescriber=Prescriber(name="Dr. Anna Schmidt", identifier="1"),
        therapy=TherapyPart(therapy_id=ID, part=1, parts=1)).model_dump(mode="json")


def pharmacy(tmp_path, agent: Agent) -> tuple[PharmacyService, Outbox]:
    store = Store(tmp_path / "pharmacy.db")
    outbox = Outbox(store, "pharmacy", WebhookSettings())
    ctx = SimpleNamespace(store=store, bus=EventBus(), admin=agent, outbox=outbox, chain=Chain(),
                          config=SimpleNamespace(checks=CheckSettings(), label="Apotheke am Markt",
                                                 prescription_schema_id="x:2:prescription:2.0"))
    service = PharmacyService(ctx)

    async def secret_key(check):  # what the verified presentation holds
        return KEY
    service._secret_key = secret_key
    return service, outbox


def verified(service: PharmacyService, *, connection_id: str | None = CONNECTION,
             check_id: str = "7d3f0a8e-2b1c-4d5e-8f90-1a2b3c4d5e6f", **prescription) -> str:
    check = StoredCheck(check_id=check_id, pres_ex_id="c0ffee00-0000-4000-8000-000000000001",
                        connection_id=connection_id, state=CheckState.VERIFIED, prescription=prescribed(**prescription),
                        token_address="0x" + "12" * 20, remaining_redemptions=1)
    service.checks.put(check.check_id, check)
    return check.check_id


def dispensed_events(outbox: Outbox) -> list[dict]:
    return [e.data for e in outbox.events() if e.type == "prescription.dispensed"]


async def test_a_dispense_over_a_connection_is_signed_recorded_announced_and_sent_to_the_wallet(tmp_path):
    agent = Agent()
    service, outbox = pharmacy(tmp_path, agent)
    check = await service.dispense(verified(service))
    assert check.state == CheckState.DISPENSED and check.after_dispense is None
    receipt = receipts.open_receipt(check.receipt_jws, agent.verkey)  # anyone, with the ledger's verkey
    assert receipt.iss == agent.did and receipt.tx_hash == TX
    assert receipt.medication_dispense == await service.fhir_dispense(check)  # the same as GET …/fhir
    assert receipt.medication_dispense["identifier"] == [{"system": "urn:erx:token-spend-tx", "value": TX}]
    assert receipt.medication_dispense["substitution"] == {"wasSubstituted": False}
    assert KEY[2:] not in check.receipt_jws and KEY[2:] not in json.dumps(receipt.model_dump(mode="json"))
    [event] = dispensed_events(outbox)
    assert event["check"]["receipt_jws"] == check.receipt_jws and "after_dispense" not in event["check"]
    assert event["medication_dispense"] == receipt.medication_dispense
    assert agent.sent == [(CONNECTION, MESSAGE_PREFIX + check.receipt_jws)]
    assert receipt_in_message(agent.sent[0][1]) == check.receipt_jws
    view = service.receipt(check.check_id)
    assert view.jws == check.receipt_jws and view.receipt == receipt
    pdf = await service.receipt_pdf(check.check_id)
    assert pdf.startswith(b"%PDF")


async def test_a_connectionless_check_gets_its_receipt_at_the_pharmacy_only(tmp_path):
    agent = Agent()
    service, _ = pharmacy(tmp_path, agent)
    check = await service.dispense(verified(service, connection_id=None))
    assert check.receipt_jws and check.after_dispense is None and agent.sent == []


async def test_a_failed_signing_never_fails_the_dispense_and_is_retried(tmp_path):
    agent = Agent()
    agent.sign_fails = AgentUnreachable("POST", "/wallet/jwt/sign", 0, "down")
    service, outbox = pharmacy(tmp_path, agent)
    check = await service.dispense(verified(service))
    assert check.state == CheckState.DISPENSED and check.receipt_jws is None
    assert check.after_dispense == AfterDispense.SIGN
    [event] = dispensed_events(outbox)  # announced at once, without a receipt
    assert event["check"]["receipt_jws"] is None and event["medication_dispense"]["identifier"][0]["value"] == TX
    with pytest.raises(Unavailable):
        service.receipt(check.check_id)

    await service._resume_after_dispense(check.check_id)  # still down: stays to do
    assert service.get(check.check_id).after_dispense == AfterDispense.SIGN
    agent.sign_fails, agent.send_fails = None, AdminApiError("POST", "/connections/x/send-message", 503, "busy")
    await service._resume_after_dispense(check.check_id)
    check = service.get(check.check_id)
    assert check.receipt_jws and check.after_dispense == AfterDispense.DELIVER and agent.sent == []
    agent.send_fails = None
    await service._resume_after_dispense(check.check_id)
    check = service.get(check.check_id)
    assert check.after_dispense is None and agent.sent == [(CONNECTION, MESSAGE_PREFIX + check.receipt_jws)]
    assert len(dispensed_events(outbox)) == 1  # the event was recorded once
    assert service.receipt(check.check_id).receipt.tx_hash == TX


async def test_a_connection_gone_leaves_the_receipt_at_the_pharmacy(tmp_path):
    agent = Agent()
    agent.send_fails = AdminApiError("POST", "/connections/x/send-message", 404, "no such connection")
    service, _ = pharmacy(tmp_path, agent)
    check = await service.dispense(verified(service))
    assert check.receipt_jws and check.after_dispense is None


async def test_a_dispense_recorded_but_not_announced_before_a_stop_is_announced_at_start_up(tmp_path):
    agent = Agent()
    service, outbox = pharmacy(tmp_path, agent)
    check = service.get(verified(service))
    check.state, check.spend_tx_hash, check.dispensed_at = CheckState.DISPENSED, TX, 1_900_000_000.0
    check.after_dispense = AfterDispense.ANNOUNCE
    service.checks.put(check.check_id, check)
    assert await service.recover() == [check.check_id]
    check = service.get(check.check_id)
    assert check.after_dispense is None and check.receipt_jws and agent.deleted == [check.pres_ex_id]
    assert [e["check"]["receipt_jws"] for e in dispensed_events(outbox)] == [check.receipt_jws]


async def test_a_generic_is_recorded_and_signed_into_the_receipt(tmp_path):
    agent = Agent()
    service, _ = pharmacy(tmp_path, agent)
    substitution = Substitution.model_validate({"kind": "generic", "medication": GENERIC, "reason": "out of stock"})
    check = await service.dispense(verified(service), substitution)
    assert check.substitution.medication.code == "01016144" and check.substitution.quantity == 20
    resource = own_receipt(check.receipt_jws).medication_dispense
    assert resource["medicationCodeableConcept"]["coding"] == [{"system": "http://fhir.de/CodeSystem/ifa/pzn",
                                                                "code": "01016144"}]
    assert resource["substitution"]["wasSubstituted"] is True
    assert resource["substitution"]["type"]["coding"][0]["code"] == "EC"
    assert resource["substitution"]["reason"] == [{"text": "out of stock"}]


async def test_a_substitution_the_rules_refuse_is_refused_and_the_check_stays_dispensable(tmp_path):
    agent = Agent()
    service, outbox = pharmacy(tmp_path, agent)
    check_id = verified(service, substitution_allowed=False)
    generic = Substitution.model_validate({"kind": "generic", "medication": GENERIC, "reason": "out of stock"})
    with pytest.raises(InvalidRequest) as refused:
        await service.dispense(check_id, generic)
    assert "aut idem" in refused.value.reason and "aut idem" in refused.value.details["rule"]
    assert service.get(check_id).state == CheckState.VERIFIED and outbox.events() == []
    smaller = Substitution.model_validate({"kind": "pack_size", "quantity": 10, "reason": "packs of 10 only"})
    check = await service.dispense(check_id, smaller)
    assert check.state == CheckState.DISPENSED and check.substitution.quantity == 10
    assert own_receipt(check.receipt_jws).medication_dispense["quantity"] == {"value": 10, "unit": "tablet"}
    with pytest.raises(Conflict):
        await service.dispense(check_id)


async def test_the_public_verify_accepts_a_genuine_receipt_and_names_what_is_wrong_with_others(tmp_path):
    agent = Agent()
    service, _ = pharmacy(tmp_path, agent)
    genuine = (await service.dispense(verified(service))).receipt_jws
    found = await service.verify_receipt(genuine)
    assert found.signer_did == agent.did and found.verkey == agent.verkey and found.receipt.tx_hash == TX

    header, payload, signature = genuine.split(".")
    body = json.loads(signed.b64url_decode(payload, "payload"))
    body["dispense"]["quantity"]["value"] = 40
    edited = ".".join([header, signed.b64url_encode(json.dumps(body).encode()), signature])
    stranger = Agent(b"s" * 32)  # signs as itself, a DID the ledger does not hold
    unknown = stranger.sign(stranger.did, {**own_receipt(genuine).model_dump(mode="json"), "iss": stranger.did},
                            receipts.TYP)
    impostor = Agent(b"i" * 32)  # a DID on the ledger, signing a receipt that names the pharmacy
    agent.ledger[impostor.did] = impostor.verkey
    claimed = impostor.sign(impostor.did, own_receipt(genuine).model_dump(mode="json"), receipts.TYP)
    not_a_receipt = agent.sign(agent.did, {"iss": agent.did}, "erx-pickup+jwt")
    for jws, problem in ((edited, "bad_signature"), (unknown, "unknown_signer"), (claimed, "signer_mismatch"),
                         (not_a_receipt, "wrong_type"), ("not.a jws", "malformed")):
        with pytest.raises(InvalidRequest) as refused:
            await service.verify_receipt(jws)
        assert refused.value.details["problem"] == problem, refused.value.reason
    agent.ledger_fails = AgentUnreachable("GET", "/ledger/did-verkey", 0, "down")
    with pytest.raises(AgentUnreachable):  # a 503, never a verdict
        await service.verify_receipt(Agent(b"n" * 32).sign(Agent(b"n" * 32).did, {}, receipts.TYP))


async def test_the_wallet_keeps_receipts_it_receives_and_shows_only_what_verifies(tmp_path):
    pharmacy_agent = Agent()
    service, _ = pharmacy(tmp_path, pharmacy_agent)
    genuine = (await service.dispense(verified(service))).receipt_jws
    header, payload, signature = genuine.split(".")
    body = json.loads(signed.b64url_decode(payload, "payload"))
    body["dispense"]["medicationCodeableConcept"]["text"] = "Oxycodon 80 mg tablet"
    edited = ".".join([header, signed.b64url_encode(json.dumps(body).encode()), signature])

    wallet_agent = Agent(b"w" * 32)
    wallet_agent.ledger = dict(pharmacy_agent.ledger)  # the same Indy network
    store = Store(tmp_path / "wallet.db")
    wallet = PatientService(SimpleNamespace(store=store, admin=wallet_agent))
    [(topic, on_message)] = [(t, h) for t, h in wallet.subscriptions() if t == "basicmessages"]
    for content in (MESSAGE_PREFIX + genuine, MESSAGE_PREFIX + genuine, MESSAGE_PREFIX + edited, "hello there"):
        await on_message(topic, {"connection_id": CONNECTION, "content": content, "state": "received"})
    held = {r.jws: r for r in await wallet.held_receipts()}
    assert set(held) == {genuine, edited}  # kept once each; the chat message is no receipt
    assert held[genuine].verified is True and held[genuine].signer_did == pharmacy_agent.did
    assert held[genuine].summary["medication"] == "Ibuprofen 400 mg tablet"
    assert held[genuine].summary["pharmacy"] == "Apotheke am Markt" and held[genuine].summary["tx_hash"] == TX
    assert held[edited].verified is False and held[edited].problem == "bad_signature"
    assert held[edited].summary is None and held[edited].medication_dispense is None  # its claims are not shown

    wallet_agent.ledger_fails = AgentUnreachable("GET", "/ledger/did-verkey", 0, "down")
    another = verified(service, check_id="8e4a1b9f-3c2d-4e6f-9a01-2b3c4d5e6f70")
    later = (await service.dispense(another)).receipt_jws
    await on_message(topic, {"connection_id": CONNECTION, "content": MESSAGE_PREFIX + later})
    assert wallet.receipts.get(next(r.receipt_id for r in wallet.receipts.all() if r.jws == later)).verified is None
    wallet_agent.ledger_fails = None
    assert all(r.verified is not None for r in await wallet.held_receipts())  # checked when listed


def render(template: str, **context) -> str:
    import jinja2

    from erx_roles.pages.web import TEMPLATES, _when
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    env.filters["when"] = _when
    return env.get_template(template).render(csrf_token="t", may=lambda action: True, **context)


async def test_the_pages_offer_substitution_within_the_rules_and_show_receipts(tmp_path):
    agent = Agent()
    service, _ = pharmacy(tmp_path, agent)
    check_id = verified(service, substitution_allowed=False)
    page = render("pharmacy/_check.html", c=service.get(check_id), code_systems=["ATC", "PZN"], link=None,
                  refusal_text=None, trusted=None)
    assert 'id="subst-pack"' in page and 'value="generic" id="subst-generic" disabled' in page
    assert "at most the 20 prescribed" in page and "ruled out substitution" in page
    smaller = Substitution.model_validate({"kind": "pack_size", "quantity": 10, "reason": "packs of 10 only"})
    check = await service.dispense(check_id, smaller)
    page = render("pharmacy/_check.html", c=check, code_systems=[], link=None, refusal_text=None, trusted=None)
    assert f'href="/checks/{check_id}/receipt.pdf"' in page and "a pack of 10 tablet" in page

    wallet_agent = Agent(b"w" * 32)
    wallet_agent.ledger = dict(agent.ledger)
    wallet = PatientService(SimpleNamespace(store=Store(tmp_path / "wallet.db"), admin=wallet_agent))
    await wallet._on_message("basicmessages", {"connection_id": CONNECTION, "content": MESSAGE_PREFIX + check.receipt_jws})
    await wallet._on_message("basicmessages", {"connection_id": CONNECTION, "content": MESSAGE_PREFIX + "a.b.c"})
    page = render("patient/_receipts.html", receipts=await wallet.held_receipts())
    assert 'data-verified="yes"' in page and "Ibuprofen 400 mg tablet" in page and "Apotheke am Markt" in page
    assert TX[:12] in page and "other pack size" in page and "packs of 10 only" in page
    assert 'data-verified="no"' in page and "malformed" in page


def test_the_dispense_form_reads_as_a_substitution(tmp_path):
    from pydantic import ValidationError

    from erx_roles.pages.pharmacy import PharmacyPages
    service, _ = pharmacy(tmp_path, Agent())
    check_id = verified(service)
    pages = PharmacyPages(service, links=None, live=None)
    assert pages._substitution(check_id, {"substitution": "", "quantity": "5"}) is None
    generic = pages._substitution(check_id, {"substitution": "generic", "generic_name": "Ibu-ratiopharm",
                                             "generic_code": "01016144", "generic_code_system": "PZN",
                                             "reason": "out of stock"})
    assert generic.medication.strength == "400 mg" and generic.medication.form == "tablet"  # the prescribed ones
    assert pages._substitution(check_id, {"substitution": "pack_size", "quantity": "10", "reason": "r"}).quantity == 10
    with pytest.raises(ValidationError):
        pages._substitution(check_id, {"substitution": "pack_size", "quantity": "ten", "reason": "r"})
