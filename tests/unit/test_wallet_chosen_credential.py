"""A wallet answering with the credential its user chose judges that credential from its own record
(no wallet search, whose cost grows with every credential held: with 10,000 held, a search cost the
holder a second of CPU per proof); where the request's restrictions are beyond that judgement it
searches only the chosen prescription's credentials (a tag query). A choice that is not in the wallet
is declined without searching it."""

from __future__ import annotations

import json
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from erx_core.acapy_admin import AdminApiError, CredentialMatch, HeldCredential, PresentationExchange
from erx_core.store import Store
from erx_roles.patient.service import PatientService, answers
from erx_schemas.prescription import ATTRIBUTES, dispensing_proof_request
from pydantic import SecretStr

from tests.support import admin_of

EXCHANGE = "6f1d4f0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
SCHEMA = "QG2SEERayJtPsDHEyzjn89:2:erx-prescription:2.0"
REQUEST = dispensing_proof_request(SCHEMA)
REFERENTS = list(REQUEST["requested_attributes"]) + list(REQUEST["requested_predicates"])


def held(referent: str, prescription_id: str, schema_id: str = SCHEMA) -> dict:
    return {"referent": referent, "cred_def_id": "L91aedNRBeAnweeLswRGgu:3:CL:9:prescription",
            "schema_id": schema_id,
            "attrs": {name: "x" for name in ATTRIBUTES} | {
                "prescription_id": prescription_id, "valid_from": "20261201", "valid_until": "20261229",
                "issue_date": "20261201"}}


class Wallet:
    """The agent's side of a proof request: many prescriptions held, one chosen."""

    def __init__(self, count: int, request: dict = REQUEST):
        self.request = request
        self.held = {f"cred-{i}": held(f"cred-{i}", f"rx-{i}") for i in range(count)}
        self.searches: list[dict | None] = []
        self.sent: list[dict] = []
        self.reported: list[str] = []

    async def presentation_exchange(self, pres_ex_id):
        return PresentationExchange.model_validate({"pres_ex_id": pres_ex_id, "state": "request-received",
                                                    "by_format": {"pres_request": {"anoncreds": self.request}}})

    async def credential(self, credential_id):
        if credential_id not in self.held:
            raise AdminApiError("GET", f"/credential/{credential_id}", 404, "Credential not found")
        return HeldCredential.model_validate(self.held[credential_id])

    async def credentials_for_request(self, pres_ex_id, prescription_id=None):
        self.searches.append(prescription_id)
        return [CredentialMatch.model_validate({"cred_info": c, "presentation_referents": REFERENTS})
                for c in self.held.values()
                if prescription_id is None or c["attrs"]["prescription_id"] == prescription_id]

    async def send_presentation(self, pres_ex_id, presentation):
        self.sent.append(presentation)

    async def problem_report(self, pres_ex_id, text):
        self.reported.append(text)


@pytest.fixture
def wallet(tmp_path):
    agent = Wallet(count=50)
    return agent, PatientService(SimpleNamespace(store=Store(tmp_path / "wallet.db"), admin=agent))


def operator_request() -> dict:
    """A request whose restriction is WQL beyond plain equality: the agent's search decides."""
    request = json.loads(json.dumps(REQUEST))
    for group in [*request["requested_attributes"].values(), *request["requested_predicates"].values()]:
        group["restrictions"] = [{"schema_id": {"$in": [SCHEMA]}}]
    return request


async def test_the_chosen_credential_is_judged_from_its_own_record_without_a_search(wallet):
    agent, service = wallet
    answer = await service.approve(EXCHANGE, credential_id="cred-17")
    assert answer == {"pres_ex_id": EXCHANGE, "state": "presentation-sent", "credential_id": "cred-17"}
    assert agent.searches == [], "no search of the wallet"
    [sent] = agent.sent
    assert {v["cred_id"] for v in sent["requested_attributes"].values()} == {"cred-17"}
    assert {v["cred_id"] for v in sent["requested_predicates"].values()} == {"cred-17"}


async def test_a_chosen_credential_of_another_schema_is_declined(wallet):
    agent, service = wallet
    agent.held["cred-5"] = held("cred-5", "rx-5", schema_id="QG2SEERayJtPsDHEyzjn89:2:erx-prescription:1.0")
    answer = await service.approve(EXCHANGE, credential_id="cred-5")
    assert answer["state"] == "declined" and agent.sent == [] and agent.searches == []


async def test_beyond_plain_restrictions_the_search_is_narrowed_to_the_chosen_prescription(tmp_path):
    agent = Wallet(count=50, request=operator_request())
    service = PatientService(SimpleNamespace(store=Store(tmp_path / "wallet.db"), admin=agent))
    assert (await service.approve(EXCHANGE, credential_id="cred-17"))["credential_id"] == "cred-17"
    assert agent.searches == ["rx-17"]


async def test_a_choice_not_in_the_wallet_is_declined_without_a_search(wallet):
    agent, service = wallet
    answer = await service.approve(EXCHANGE, credential_id="cred-999")
    assert answer["state"] == "declined" and agent.searches == [] and agent.sent == []
    assert agent.reported == ["no prescription in this wallet matches the request"]


async def test_without_a_choice_the_wallet_still_considers_all_it_holds(wallet):
    agent, service = wallet
    assert (await service.approve(EXCHANGE))["state"] == "presentation-sent"
    assert agent.searches == [None]


async def test_an_odd_prescription_id_is_searched_for_unnarrowed(tmp_path):
    agent = Wallet(count=5, request=operator_request())
    agent.held["cred-3"]["attrs"]["prescription_id"] = 'rx"}]} odd'
    service = PatientService(SimpleNamespace(store=Store(tmp_path / "wallet.db"), admin=agent))
    assert (await service.approve(EXCHANGE, credential_id="cred-3"))["credential_id"] == "cred-3"
    assert agent.searches == [None]


def credential(**changes) -> HeldCredential:
    return HeldCredential.model_validate(held("c1", "rx-1") | changes)


@pytest.mark.parametrize("restriction, expected", [
    ({"schema_id": SCHEMA}, True),
    ({"schema_id": SCHEMA.replace("2.0", "1.0")}, False),
    ({"issuer_did": "L91aedNRBeAnweeLswRGgu"}, True),
    ({"issuer_did": "QG2SEERayJtPsDHEyzjn89"}, False),
    ({"schema_issuer_did": "QG2SEERayJtPsDHEyzjn89", "schema_name": "erx-prescription", "schema_version": "2.0"},
     True),
    ({"cred_def_id": "L91aedNRBeAnweeLswRGgu:3:CL:9:prescription", "schema_version": "1.0"}, False),
    ({"attr::medication_code::value": "x"}, True),
    ({"attr::medication_code::value": "N02AA05"}, False),
    ({"schema_id": {"$neq": SCHEMA}}, None),
    ({"$or": [{"schema_id": SCHEMA}]}, None),
])
def test_answers_judges_plain_restrictions_and_leaves_the_rest_to_the_agent(restriction, expected):
    request = json.loads(json.dumps(REQUEST))
    request["requested_attributes"]["prescription"]["restrictions"] = [{"schema_id": "other:2:x:1"}, restriction]
    assert answers(request, credential()) is expected


def test_answers_needs_every_requested_name():
    request = json.loads(json.dumps(REQUEST))
    request["requested_attributes"]["prescription"]["names"].append("not_in_the_credential")
    assert answers(request, credential()) is False
    no_schema = HeldCredential.model_validate(held("c1", "rx-1") | {"schema_id": None})
    assert answers(REQUEST, no_schema) is None


async def test_the_narrowing_passes_acapy_s_own_check_of_extra_queries():
    """ACA-Py's route validates `extra_query` before the holder sees it (a plain value is a 422)."""
    from acapy_agent.messaging.valid import IndyExtraWQL
    from erx_core import acapy_admin
    sent: list[str] = []

    async def get(path, **params):
        sent.append(params["extra_query"])
        return []

    admin = acapy_admin.AcaPyAdmin("http://127.0.0.1:9", SecretStr("k"))
    admin._get = get
    await admin.credentials_for_request(EXCHANGE, prescription_id="262b90b1-71c3-4e78-be9a-44612e086218")
    assert IndyExtraWQL()(sent[0]) == sent[0]


async def test_the_port_sends_the_narrowing_as_an_encoded_tag_query():
    seen: list[dict] = []

    async def credentials(request: web.Request) -> web.Response:
        seen.append(parse_qs(urlsplit(str(request.url)).query))
        return web.json_response([])

    app = web.Application()
    app.router.add_get(f"/present-proof-2.0/records/{EXCHANGE}/credentials", credentials)
    hostile = 'rx-1"}, {"$or": [{}]}&count=100000'
    async with admin_of(app) as admin:
        await admin.credentials_for_request(EXCHANGE, prescription_id=hostile)
        await admin.credentials_for_request(EXCHANGE)
    narrowed, whole = seen
    assert json.loads(narrowed["extra_query"][0]) == {"attr::prescription_id::value": {"$in": [hostile]}}
    assert narrowed["count"] == ["100"], "a value cannot add parameters of its own"
    assert "extra_query" not in whole


async def test_a_credential_with_an_odd_part_number_does_not_stop_the_wallet_answering(wallet):
    agent, service = wallet
    agent.held["cred-2"]["attrs"]["therapy_part"] = "two"  # as an issuer wrote it; the schema does not say
    assert (await service.approve(EXCHANGE))["state"] == "presentation-sent"


async def test_a_non_ascii_digit_part_number_does_not_stop_the_wallet_either(wallet):
    agent, service = wallet
    agent.held["cred-4"]["attrs"]["therapy_part"] = "²"  # str.isdigit() says yes, int() says no
    assert (await service.approve(EXCHANGE))["state"] == "presentation-sent"
