"""Hostile parties on the real network: a rogue issuer and a rogue holder.

The rogue issuer is any organisation with an ENDORSER DID on the pool (here the pharmacy-b agent,
which has one): it writes its own credential definition over the national prescription schema and
issues a forged prescription ("Oxycodone 80 mg, 100") to a patient's wallet, carrying the token key,
chain id and contract of a genuine prescription the doctor issued to that same wallet.

The rogue holder is a wallet that composes its presentations itself: which credential proves the
revealed attribute group, which proves each predicate, and in which order the sub-proofs (and so the
`identifiers`) are listed. It is a real ACA-Py 1.7.0 agent started for this module (no controller,
nothing answered on its own); the test drives it through its admin API.

Every hostile case must end `refused` (`invalid_presentation` or `untrusted_issuer`) without showing
anything of the forged content, must not be dispensable (409) and must leave the genuine token's
count on chain untouched. The genuine credential presented through the same manual path is verified
and dispensed, so the refusals are not accidents of the harness.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eth_account import Account
from pydantic import SecretStr

from erx_contracts.client import PrescriptionTokenClient
from erx_cli.system import LocalSystem as Network
from erx_core.processes import ProcessSpec
from erx_core.settings import REPO_ROOT
from erx_roles.client import ControllerApiError
from erx_roles.invitations import invitation_from_url
from erx_roles.scenario import Scenario, sample_order
from tests.support import manual_wallet

pytestmark = pytest.mark.integration

DOCTOR, PHARMACY, ROGUE_ISSUER = "doctor", "pharmacy", "pharmacy-b"
WALLET = "rogue-wallet"
WAIT_S = 30
REFUSED_AS_HOSTILE = {"invalid_presentation", "untrusted_issuer"}
FORGED = {"medication_name": "Oxycodone", "medication_code": "N02AA05", "medication_strength": "80 mg",
          "medication_form": "prolonged-release tablet", "quantity": "100",
          "dosage_instructions": "1 tablet every 12 hours"}

# How the rogue wallet orders its sub-proofs.
#
# Stock ACA-Py 1.7.0 (`AnonCredsHolder.create_presentation`) adds credentials to anoncreds'
# `PresentCredentials` in the order it meets them: first the credential of each requested attribute
# group, then those of the predicates; anoncreds-rs builds one sub-proof per credential in that
# order (`prover::create_presentation`, `identifiers.push`). So a stock wallet presenting the forged
# credential's attributes with the genuine credential's predicates always lists the FORGED sub-proof
# first; it cannot be told otherwise through the admin API (a referent that is not in the request,
# used to bring another credential forward, is refused by anoncreds-rs: "AttributeInfo not found").
# Nothing but the holder's own software decides that order, and a rogue holder runs software of its
# choice. This wallet is ACA-Py 1.7.0 with one change, made at start-up below: sub-proofs follow the
# wallet's own credential ids (referents) in ascending order. The wallet chose those ids when it
# stored each credential (`/store {"credential_id": ...}`), so the test picks the order by id:
#   rank 1 forged "before" < rank 2 genuine < rank 3 forged "after"
# The order each presentation really had is asserted from the `identifiers` of the presentation in
# the wallet's own exchange record (kept: `auto_remove: false`; the pharmacy deletes its copy once a
# check is final).
ROGUE_ACAPY = '''
from acapy_agent.anoncreds import holder

_fetch = holder.AnonCredsHolder._get_credential


async def _get_credential(self, credential_id):
    credential = await _fetch(self, credential_id)
    credential.wallet_referent = credential_id
    return credential


class _Presentation(holder.Presentation):
    """Sub-proofs in the order of the wallet's credential ids, not attribute groups first."""

    @classmethod
    def create(cls, pres_req, present_creds, *args):
        present_creds.entries = dict(sorted(present_creds.entries.items(),
                                            key=lambda entry: getattr(entry[0], "wallet_referent", "")))
        return super().create(pres_req, present_creds, *args)


holder.AnonCredsHolder._get_credential = _get_credential
holder.Presentation = _Presentation

from acapy_agent.__main__ import script_main

script_main()
'''


def referent(rank: int) -> str:
    """A wallet credential id (UUID-shaped, as ACA-Py's own) that sorts by `rank` (1..9)."""
    return str(rank) + str(uuid.uuid4())[1:]


class Admin:
    """An agent's admin API as the hostile parties call it: raw requests, their own choices."""

    def __init__(self, url: str, api_key: SecretStr):
        self.url = url.rstrip("/")
        self._http = aiohttp.ClientSession(headers={"x-api-key": api_key.get_secret_value()},
                                           timeout=aiohttp.ClientTimeout(total=60))

    @classmethod
    def of(cls, network: Network, name: str, admin_port: int | None = None) -> Admin:
        port = admin_port if admin_port is not None else network.settings.agent(name).admin_port
        return cls(network.settings.url(port), network.org(name).secrets.admin_api_key(name))

    async def close(self) -> None:
        await self._http.close()

    async def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        async with self._http.request(method, self.url + path, json=body, params=params or None) as resp:
            data = await resp.json() if resp.content_type == "application/json" else await resp.text()
            assert resp.status < 400, f"{method} {path} -> {resp.status}: {data}"
            return data

    async def get(self, path: str, **params: Any) -> Any:
        return await self.call("GET", path, **params)

    async def post(self, path: str, body: Any = None, **params: Any) -> Any:
        return await self.call("POST", path, {} if body is None else body, **params)

    async def until(self, what: str, probe, timeout_s: float = WAIT_S):
        deadline = time.monotonic() + timeout_s
        while not (found := await probe()):
            assert time.monotonic() < deadline, f"{self.url}: {what} did not happen within {timeout_s:.0f} s"
            await asyncio.sleep(0.2)
        return found

    async def ready(self) -> bool:
        try:
            return bool((await self.get("/status/ready")).get("ready"))
        except (aiohttp.ClientError, AssertionError):
            return False

    async def connection_active(self, connection_id: str) -> bool:
        return (await self.get(f"/connections/{connection_id}")).get("state") in ("active", "completed")

    async def credential_exchange(self, cred_ex_id: str) -> dict:
        return (await self.get(f"/issue-credential-2.0/records/{cred_ex_id}"))["cred_ex_record"]

    async def presentation_exchange(self, pres_ex_id: str) -> dict:
        return await self.get(f"/present-proof-2.0/records/{pres_ex_id}")


class RogueWallet:
    """The holder: receives invitations, accepts offers (storing each credential under an id it
    chooses) and answers proof requests with presentations it composes."""

    def __init__(self, network: Network):
        self.network = network
        # free ports; no public DID; nothing answered on its own. A label of its own: organisations list
        # their connections by label, and the pages test picks its wallet's connection by that label
        self.agent = manual_wallet(WALLET).model_copy(update={"label": "Rogue holder"})
        self.spec_name = f"agent-{WALLET}"
        self.org = network.extra_org(self.agent)  # a wallet deployment of its own, not in the system's list
        self.admin = Admin(self.org.settings.admin_url, self.org.secrets.admin_api_key(WALLET))

    async def start(self) -> RogueWallet:
        launch = self.org.agent_launch()
        env = launch.env()
        env.pop("ACAPY_WEBHOOK_URL")  # no controller: the test reads the agent's records itself
        self.org.supervisor.start(ProcessSpec(
            name=self.spec_name, argv=[sys.executable, "-c", ROGUE_ACAPY, *launch.argv(Path("aca-py"))[1:]],
            env=env, cwd=REPO_ROOT, log_file=self.org.logs / f"{self.spec_name}.log",
            ports=[self.agent.inbound_port, self.agent.admin_port]))
        await self.admin.until("agent ready", self.admin.ready, timeout_s=90)
        return self

    async def stop(self) -> None:
        await self.admin.close()
        self.org.supervisor.stop(self.spec_name, timeout_s=20)

    async def connect(self, invitation: dict) -> str:
        """Accept an invitation with a handshake; the wallet's side of the connection, once active."""
        record = await self.admin.post("/out-of-band/receive-invitation", invitation, auto_accept="true")
        connection_id = record["connection_id"]
        await self.admin.until("connection active", lambda: self.admin.connection_active(connection_id))
        return connection_id

    async def accept(self, connection_id: str, prescription_id: str, credential_id: str) -> str:
        """Take the offer of `prescription_id` on `connection_id`, store the credential as `credential_id`."""
        async def offer() -> str | None:
            found = await self.admin.get("/issue-credential-2.0/records", connection_id=connection_id,
                                         state="offer-received")
            for item in found["results"]:
                record = item["cred_ex_record"]
                preview = {a["name"]: a["value"]
                           for a in record["cred_offer"]["credential_preview"]["attributes"]}
                if preview.get("prescription_id") == prescription_id:
                    return record["cred_ex_id"]
            return None

        cred_ex_id = await self.admin.until(f"offer of {prescription_id}", offer)
        await self.admin.post(f"/issue-credential-2.0/records/{cred_ex_id}/send-request")

        async def received() -> bool:
            return (await self.admin.credential_exchange(cred_ex_id))["state"] == "credential-received"

        await self.admin.until("credential received", received)
        await self.admin.post(f"/issue-credential-2.0/records/{cred_ex_id}/store", {"credential_id": credential_id})
        return credential_id

    async def attributes(self, credential_id: str) -> dict[str, str]:
        return (await self.admin.get(f"/credential/{credential_id}"))["attrs"]

    async def request_for(self, thread_id: str) -> str:
        """The wallet's exchange for the proof request on DIDComm thread `thread_id`."""
        async def waiting() -> str | None:
            found = await self.admin.get("/present-proof-2.0/records", thread_id=thread_id)
            return next((r["pres_ex_id"] for r in found["results"] if r["state"] == "request-received"), None)
        return await self.admin.until(f"proof request {thread_id}", waiting)

    async def present(self, pres_ex_id: str, *, attributes: str, valid_until: str, valid_from: str) -> list[str]:
        """Answer with the revealed group from `attributes` and each predicate from the credential
        named; returns the credential definitions of the sub-proofs, in the order they were built."""
        await self.admin.post(f"/present-proof-2.0/records/{pres_ex_id}/send-presentation", {
            "anoncreds": {"requested_attributes": {"prescription": {"cred_id": attributes, "revealed": True}},
                          "requested_predicates": {"valid_until": {"cred_id": valid_until},
                                                   "valid_from": {"cred_id": valid_from}},
                          "self_attested_attributes": {}},
            "auto_remove": False})
        record = await self.admin.presentation_exchange(pres_ex_id)
        presentation = record["by_format"]["pres"]["anoncreds"]
        return [identifier["cred_def_id"] for identifier in presentation["identifiers"]]


class Hostile:
    """Everything the cases share: the genuine and forged credentials in the rogue wallet."""

    genuine_cred_def: str
    forged_cred_def: str
    genuine: str  # wallet credential ids
    forged_before: str
    forged_after: str
    token_address: str
    prescription_id: str
    doctor_connection: tuple[str, str]  # (doctor side, wallet side)
    pharmacy_connection: tuple[str, str]  # (pharmacy side, wallet side)

    def __init__(self, network: Network, scenario: Scenario, wallet: RogueWallet):
        self.network, self.scenario, self.wallet = network, scenario, wallet
        self.pharmacy = scenario.client(PHARMACY)
        self.pharmacy_admin = Admin.of(network, PHARMACY)
        self.issuer_admin = Admin.of(network, ROGUE_ISSUER)

    async def close(self) -> None:
        await self.pharmacy_admin.close()
        await self.issuer_admin.close()

    async def connect_to_controller(self, organisation: str) -> tuple[str, str]:
        """The wallet opens an organisation's invitation; (organisation side, wallet side)."""
        client = self.scenario.client(organisation)
        invitation = await client.post("/api/invitations")
        wallet_side = await self.wallet.connect(await invitation_from_url(invitation["invitation_url"]))
        connection = await client.get(f"/api/invitations/{invitation['invitation_id']}/connection", wait=WAIT_S)
        return connection["connection_id"], wallet_side

    async def genuine_prescription(self, doctor_side: str, wallet_side: str, credential_id: str,
                                   **order: Any) -> dict:
        doctor = self.scenario.client(DOCTOR)
        created = await doctor.post("/api/prescriptions", {"connection_id": doctor_side,
                                                           "order": sample_order(**order)})
        await self.wallet.accept(wallet_side, created["prescription_id"], credential_id)
        issued = await doctor.get(f"/api/prescriptions/{created['prescription_id']}", wait=WAIT_S)
        assert issued["state"] == "issued", issued
        return issued

    async def forge(self, connection_id: str, wallet_side: str, credential_id: str) -> str:
        """The rogue issuer's credential: the genuine one's attributes (token key, chain, contract,
        patient, prescriber), another medication and quantity."""
        attributes = await self.wallet.attributes(self.genuine) | FORGED
        attributes["prescription_id"] = str(uuid.uuid4())
        await self.issuer_admin.post("/issue-credential-2.0/send-offer", {
            "connection_id": connection_id, "auto_issue": True, "auto_remove": False,
            "credential_preview": {"@type": "issue-credential/2.0/credential-preview",
                                   "attributes": [{"name": k, "value": v} for k, v in attributes.items()]},
            "filter": {"anoncreds": {"cred_def_id": self.forged_cred_def}}})
        return await self.wallet.accept(wallet_side, attributes["prescription_id"], credential_id)

    async def request(self, via: str) -> tuple[dict, str]:
        """The pharmacy asks (a QR code, or over its connection to the wallet); returns the check and
        the wallet's exchange for that request."""
        if via == "connection":
            check = await self.pharmacy.post("/api/checks", {"connection_id": self.pharmacy_connection[0]})
        else:
            check = await self.pharmacy.post("/api/checks", {})
            invitation = await invitation_from_url(check["invitation_url"])
            await self.wallet.admin.post("/out-of-band/receive-invitation", invitation, auto_accept="true")
        thread_id = (await self.pharmacy_admin.presentation_exchange(check["pres_ex_id"]))["thread_id"]
        return check, await self.wallet.request_for(thread_id)

    async def checked(self, check: dict) -> dict:
        return await self.pharmacy.get(f"/api/checks/{check['check_id']}", wait=WAIT_S)

    async def remaining(self) -> int:
        async with await PrescriptionTokenClient.connect(self.network.chain_config(), Account.create()) as chain:
            return (await chain.status(self.token_address)).remaining

    async def dispense_status(self, check: dict) -> int:
        try:
            await self.pharmacy.post(f"/api/checks/{check['check_id']}/dispense")
        except ControllerApiError as exc:
            return exc.status
        return 200


@pytest.fixture(scope="module")
async def hostile(network: Network):
    scenario = Scenario(network)
    wallet = await RogueWallet(network).start()
    world = Hostile(network, scenario, wallet)
    try:
        world.genuine_cred_def = await scenario.onboard(DOCTOR, [PHARMACY])
        world.doctor_connection = await world.connect_to_controller(DOCTOR)
        world.genuine = referent(2)
        issued = await world.genuine_prescription(*world.doctor_connection, world.genuine, redemptions=6)
        world.token_address, world.prescription_id = issued["token_address"], issued["prescription_id"]

        # the rogue issuer: its own (non-revocable) credential definition over the national schema
        did = (await world.issuer_admin.get("/wallet/did/public"))["result"]["did"]
        created = await world.issuer_admin.post("/anoncreds/credential-definition", {
            "credential_definition": {"issuerId": did, "schemaId": network.prescription_schema_id,
                                      "tag": f"rogue-{uuid.uuid4().hex[:8]}"},
            "options": {"support_revocation": False}})
        world.forged_cred_def = created["credential_definition_state"]["credential_definition_id"]
        assert world.forged_cred_def.startswith(f"{did}:3:CL:")
        invitation = await world.issuer_admin.post("/out-of-band/create-invitation", {
            "handshake_protocols": ["https://didcomm.org/didexchange/1.1"], "use_did_method": "did:peer:4"},
            auto_accept="true")
        wallet_to_issuer = await wallet.connect(invitation["invitation"])

        async def issuer_side() -> str | None:
            found = await world.issuer_admin.get("/connections", invitation_msg_id=invitation["invi_msg_id"])
            return next((c["connection_id"] for c in found["results"] if c["state"] in ("active", "completed")),
                        None)
        issuer_to_wallet = await world.issuer_admin.until("rogue issuer connected", issuer_side)
        world.forged_before = await world.forge(issuer_to_wallet, wallet_to_issuer, referent(1))
        world.forged_after = await world.forge(issuer_to_wallet, wallet_to_issuer, referent(3))
        assert sorted([world.forged_before, world.genuine, world.forged_after]) == \
            [world.forged_before, world.genuine, world.forged_after]

        world.pharmacy_connection = await world.connect_to_controller(PHARMACY)
        yield world
    finally:
        await world.close()
        await wallet.stop()
        await scenario.close()


async def hostile_outcome(world: Hostile, check: dict, before: int) -> list[str]:
    """What went wrong with a check that must be refused (empty if nothing did)."""
    problems = []
    reason = (check.get("refusal") or {}).get("reason")
    if check["state"] != "refused" or reason not in REFUSED_AS_HOSTILE:
        problems.append(f"check ended {check['state']!r} ({reason}), expected refused as one of "
                        f"{sorted(REFUSED_AS_HOSTILE)}")
    if check.get("prescription") is not None:
        problems.append(f"the check shows a prescription: {check['prescription']}")
    if "Oxycodone" in json.dumps(check):
        problems.append("the forged medication appears in the check")
    status = await world.dispense_status(check)
    if status != 409:
        problems.append(f"POST /api/checks/{{id}}/dispense answered {status}, expected 409")
    after = await world.remaining()
    if after != before:
        problems.append(f"the genuine token's remaining redemptions changed: {before} -> {after}")
    return problems


# -- (d) the manual path itself works -------------------------------------------------------------------
@pytest.mark.parametrize("via", ["qr", "connection"])
async def test_genuine_credential_through_the_manual_path_is_verified_and_dispensed(hostile: Hostile, via: str):
    before = await hostile.remaining()
    check, pres_ex_id = await hostile.request(via)
    order = await hostile.wallet.present(pres_ex_id, attributes=hostile.genuine, valid_until=hostile.genuine,
                                         valid_from=hostile.genuine)
    assert order == [hostile.genuine_cred_def]
    check = await hostile.checked(check)
    assert check["state"] == "verified", check
    assert check["prescription"]["prescription_id"] == hostile.prescription_id
    assert check["prescription"]["medication"]["name"] == "Ibuprofen"
    dispensed = await hostile.pharmacy.post(f"/api/checks/{check['check_id']}/dispense")
    assert dispensed["state"] == "dispensed", dispensed
    assert await hostile.remaining() == before - 1


# -- (a) the forged credential's attributes with the genuine credential's predicates ----------------------
@pytest.mark.parametrize("genuine_sub_proof", ["first", "last"])
async def test_forged_attributes_with_genuine_predicates_are_refused(hostile: Hostile, genuine_sub_proof: str):
    """The genuine credential proves both predicates, the forged one reveals the prescription.
    Sub-proof order (see ROGUE_ACAPY): the forged credential stored after the genuine one is proven
    after it (genuine first); the one stored before it is proven first (genuine last, which is also
    what stock ACA-Py does)."""
    forged = hostile.forged_after if genuine_sub_proof == "first" else hostile.forged_before
    before = await hostile.remaining()
    check, pres_ex_id = await hostile.request("qr")
    order = await hostile.wallet.present(pres_ex_id, attributes=forged, valid_until=hostile.genuine,
                                         valid_from=hostile.genuine)
    expected = [hostile.genuine_cred_def, hostile.forged_cred_def]
    assert order == (expected if genuine_sub_proof == "first" else expected[::-1])
    problems = await hostile_outcome(hostile, await hostile.checked(check), before)
    assert not problems, "; ".join(problems)


# -- (b) the forged credential alone ------------------------------------------------------------------
async def test_forged_credential_alone_is_refused_as_untrusted_issuer(hostile: Hostile):
    before = await hostile.remaining()
    check, pres_ex_id = await hostile.request("connection")
    forged = hostile.forged_before
    order = await hostile.wallet.present(pres_ex_id, attributes=forged, valid_until=forged, valid_from=forged)
    assert order == [hostile.forged_cred_def]
    check = await hostile.checked(check)
    problems = await hostile_outcome(hostile, check, before)
    if (check.get("refusal") or {}).get("reason") != "untrusted_issuer":
        problems.append(f"refusal {check.get('refusal')}, expected untrusted_issuer")
    assert not problems, "; ".join(problems)


# -- (c) the predicates split across two credentials ---------------------------------------------------------
async def test_predicates_split_across_two_credentials_are_refused_as_invalid(hostile: Hostile):
    """The genuine credential reveals the prescription and proves `valid_from`; `valid_until` comes
    from the forged credential (stored after the genuine one, so the genuine sub-proof is first).

    Not tried: `valid_until` from a second genuine prescription of the same practice. ACA-Py 1.7.0's
    holder builds one revocation state per registry (the first credential's) and uses it for both
    credentials, so that presentation fails cryptographic verification whatever the pharmacy's rules;
    its refusal would prove nothing."""
    before = await hostile.remaining()
    check, pres_ex_id = await hostile.request("qr")
    order = await hostile.wallet.present(pres_ex_id, attributes=hostile.genuine, valid_until=hostile.forged_after,
                                         valid_from=hostile.genuine)
    assert order == [hostile.genuine_cred_def, hostile.forged_cred_def]
    check = await hostile.checked(check)
    problems = await hostile_outcome(hostile, check, before)
    if (check.get("refusal") or {}).get("reason") != "invalid_presentation":
        problems.append(f"refusal {check.get('refusal')}, expected invalid_presentation")
    assert not problems, "; ".join(problems)
