"""A wallet answering with the credential its user chose looks only at that prescription's credentials
(a tag query), so its cost does not grow with the wallet's history; a choice that is not in the wallet
is declined without searching it."""

from __future__ import annotations

import json
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from pydantic import SecretStr

from erx_core.acapy_admin import AcaPyAdmin, AdminApiError, CredentialMatch, PresentationExchange
from erx_core.store import Store
from erx_roles.patient.service import PatientService
from erx_schemas.prescription import dispensing_proof_request

EXCHANGE = "6f1d4f0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
SCHEMA = "QG2SEERayJtPsDHEyzjn89:2:erx-prescription:2.0"
REQUEST = dispensing_proof_request(SCHEMA)
REFERENTS = list(REQUEST["requested_attributes"]) + list(REQUEST["requested_predicates"])


def held(referent: str, prescription_id: str) -> dict:
    return {"referent": referent, "cred_def_id": "L91aedNRBeAnweeLswRGgu:3:CL:9:prescription",
            "attrs": {"prescription_id": prescription_id, "valid_from": "20261201", "valid_until": "20261229",
                      "issue_date": "20261201"}}


class Wallet:
    """The agent's side of a proof request: many prescriptions held, one chosen."""

    def __init__(self, count: int):
        self.held = {f"cred-{i}": held(f"cred-{i}", f"rx-{i}") for i in range(count)}
        self.searches: list[dict | None] = []
        self.sent: list[dict] = []
        self.reported: list[str] = []

    async def presentation_exchange(self, pres_ex_id):
        return PresentationExchange.model_validate({"pres_ex_id": pres_ex_id, "state": "request-received",
                                                    "by_format": {"pres_request": {"anoncreds": REQUEST}}})

    async def credential(self, credential_id):
        if credential_id not in self.held:
            raise AdminApiError("GET", f"/credential/{credential_id}", 404, "Credential not found")
        return SimpleNamespace(attrs=self.held[credential_id]["attrs"])

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


async def test_the_chosen_credential_is_looked_up_by_its_prescription_only(wallet):
    agent, service = wallet
    answer = await service.approve(EXCHANGE, credential_id="cred-17")
    assert answer == {"pres_ex_id": EXCHANGE, "state": "presentation-sent", "credential_id": "cred-17"}
    assert agent.searches == ["rx-17"], "narrowed to the chosen prescription, not the whole wallet"
    [sent] = agent.sent
    assert {v["cred_id"] for v in sent["requested_attributes"].values()} == {"cred-17"}


async def test_a_choice_not_in_the_wallet_is_declined_without_a_search(wallet):
    agent, service = wallet
    answer = await service.approve(EXCHANGE, credential_id="cred-999")
    assert answer["state"] == "declined" and agent.searches == [] and agent.sent == []
    assert agent.reported == ["no prescription in this wallet matches the request"]


async def test_without_a_choice_the_wallet_still_considers_all_it_holds(wallet):
    agent, service = wallet
    assert (await service.approve(EXCHANGE))["state"] == "presentation-sent"
    assert agent.searches == [None]


async def test_an_odd_prescription_id_is_searched_for_unnarrowed(wallet):
    agent, service = wallet
    agent.held["cred-3"]["attrs"]["prescription_id"] = 'rx"}]} odd'
    assert (await service.approve(EXCHANGE, credential_id="cred-3"))["credential_id"] == "cred-3"
    assert agent.searches == [None]


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
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    admin = AcaPyAdmin(f"http://127.0.0.1:{port}", SecretStr("k"))
    try:
        hostile = 'rx-1"}, {"$or": [{}]}&count=100000'
        await admin.credentials_for_request(EXCHANGE, prescription_id=hostile)
        await admin.credentials_for_request(EXCHANGE)
    finally:
        await admin.close()
        await runner.cleanup()
    narrowed, whole = seen
    assert json.loads(narrowed["extra_query"][0]) == {"attr::prescription_id::value": {"$in": [hostile]}}
    assert narrowed["count"] == ["100"], "a value cannot add parameters of its own"
    assert "extra_query" not in whole
