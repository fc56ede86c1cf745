"""The typed port to one ACA-Py agent's admin API: the only code that speaks to an agent.

Each method is one admin call with pydantic records in and out. Every id that becomes part of a path
is checked against its format (`erx_core.ids`) and percent-encoded, so no request value can reach
another admin route (`../shutdown`). Errors come back as `AdminApiError` (the agent answered with an
error) or `AgentUnreachable` (it did not answer), never as a bare aiohttp error.

Services and pages call these methods only; nothing else builds an admin path.
"""

from __future__ import annotations

import asyncio
import json
import time
from enum import StrEnum
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from erx_core.ids import InvalidId, checked, segment
from erx_schemas.signed import SignatureInvalid, SignedDocument, full_verkey


class AdminApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, reason: str):
        super().__init__(f"{method} {path} -> {status}: {reason}")
        self.status = status
        self.reason = reason


class AgentUnreachable(AdminApiError):
    """The agent did not answer (down, restarting, timed out): a transient fault, never a verdict."""


class Topic(StrEnum):
    """Webhook topics the controllers listen to."""

    CONNECTIONS = "connections"
    ISSUE_CREDENTIAL = "issue_credential_v2_0"
    PRESENT_PROOF = "present_proof_v2_0"
    REVOCATION_NOTIFICATION = "revocation-notification"
    BASIC_MESSAGES = "basicmessages"


class CredExState(StrEnum):
    """issue-credential/2.0 exchange states (ACA-Py's names)."""

    OFFER_SENT = "offer-sent"
    OFFER_RECEIVED = "offer-received"
    REQUEST_SENT = "request-sent"
    REQUEST_RECEIVED = "request-received"
    CREDENTIAL_ISSUED = "credential-issued"
    CREDENTIAL_RECEIVED = "credential-received"
    DONE = "done"
    CREDENTIAL_REVOKED = "credential-revoked"
    ABANDONED = "abandoned"
    DECLINED = "declined"
    DELETED = "deleted"


class PresExState(StrEnum):
    """present-proof/2.0 exchange states (ACA-Py's names)."""

    REQUEST_SENT = "request-sent"
    REQUEST_RECEIVED = "request-received"
    PRESENTATION_SENT = "presentation-sent"
    PRESENTATION_RECEIVED = "presentation-received"
    DONE = "done"
    ABANDONED = "abandoned"
    DELETED = "deleted"


ACTIVE_CONNECTION = ("active", "completed")


class _Record(BaseModel):
    # ACA-Py adds fields between versions: keep what we do not model instead of failing on it
    model_config = ConfigDict(extra="allow")


class PublicDid(_Record):
    did: str
    verkey: str


class ConnectionRecord(_Record):
    connection_id: str
    state: str | None = None
    their_label: str | None = None
    invitation_msg_id: str | None = None
    created_at: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_CONNECTION


class Invitation(_Record):
    invi_msg_id: str
    invitation_url: str
    invitation: dict
    oob_id: str | None = None


class CredentialExchange(_Record):
    cred_ex_id: str
    state: CredExState | str | None = None
    connection_id: str | None = None
    thread_id: str | None = None
    error_msg: str | None = None
    created_at: str | None = None
    cred_offer: dict | None = None
    cred_preview: dict | None = None
    # from the exchange's AnonCreds detail record (issuer side, once issued)
    rev_reg_id: str | None = None
    cred_rev_id: str | None = None

    @property
    def preview(self) -> dict[str, str]:
        """The offered attributes, by name."""
        preview = (self.cred_offer or {}).get("credential_preview") or self.cred_preview or {}
        return {a["name"]: a["value"] for a in preview.get("attributes", []) if "name" in a}

    @property
    def comment(self) -> str:
        return (self.cred_offer or {}).get("comment") or ""


class PresentationExchange(_Record):
    pres_ex_id: str
    state: PresExState | str | None = None
    connection_id: str | None = None
    thread_id: str | None = None
    verified: str | None = None
    verified_msgs: list[str] | None = None
    error_msg: str | None = None
    created_at: str | None = None
    by_format: dict | None = None
    pres_request: dict | None = None

    @property
    def request(self) -> dict[str, Any]:
        """The AnonCreds proof request."""
        return ((self.by_format or {}).get("pres_request") or {}).get("anoncreds") or {}

    @property
    def presentation(self) -> dict[str, Any]:
        """The AnonCreds presentation, as the holder composed it (verifier side, once received)."""
        return ((self.by_format or {}).get("pres") or {}).get("anoncreds") or {}

    @property
    def invitation_id(self) -> str:
        """For a connectionless request: the out-of-band invitation it came with."""
        return ((self.pres_request or {}).get("~thread") or {}).get("pthid") or ""


class HeldCredential(_Record):
    """A credential in a holder's wallet (`GET /credentials`)."""

    referent: str
    cred_def_id: str
    schema_id: str | None = None
    attrs: dict[str, str]
    rev_reg_id: str | None = None
    cred_rev_id: str | None = None


class CredentialMatch(_Record):
    """A held credential and the proof-request referents it can answer."""

    cred_info: HeldCredential
    presentation_referents: list[str] = []


class AcaPyAdmin:
    def __init__(self, base_url: str, api_key: SecretStr, timeout_s: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self._headers = {"x-api-key": api_key.get_secret_value()}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AcaPyAdmin:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    async def _request(self, method: str, path: str, *, json: Any = None, params: dict | None = None) -> Any:
        """`path` is built by this class only, from constants and `segment()`-encoded ids."""
        try:
            async with self._http().request(method, self.base_url + path, json=json, params=params) as resp:
                if resp.status >= 400:
                    raise AdminApiError(method, path, resp.status, (await resp.text()).strip())
                if resp.content_type == "application/json":
                    return await resp.json()
                return await resp.text()
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise AgentUnreachable(method, path, 0, f"agent admin API at {self.base_url} unreachable: {exc}") from exc

    async def _get(self, path: str, **params: Any) -> Any:
        return await self._request("GET", path, params={k: v for k, v in params.items() if v is not None} or None)

    async def _post(self, path: str, body: Any = None, **params: Any) -> Any:
        return await self._request("POST", path, json=body if body is not None else {}, params=params or None)

    @staticmethod
    def _path(template: str, **ids: tuple[str, object]) -> str:
        """`template` with each `{name}` replaced by a checked, percent-encoded id of its kind. An id of
        the wrong format is answered like an unknown one (404), without a request to the agent."""
        try:
            return template.format(**{name: segment(kind, value) for name, (kind, value) in ids.items()})
        except InvalidId as exc:
            raise AdminApiError("-", template, 404, str(exc)) from None

    @staticmethod
    def _id(kind: str, value: object) -> str:
        """An id for a request body or query, checked like a path segment."""
        try:
            return checked(kind, value)
        except InvalidId as exc:
            raise AdminApiError("-", kind, 404, str(exc)) from None

    # -- health ---------------------------------------------------------------------------
    async def is_ready(self) -> bool:
        try:
            return bool((await self._get("/status/ready")).get("ready"))
        except AdminApiError:
            return False

    async def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not await self.is_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent at {self.base_url} not ready after {timeout_s:.0f} s")
            await asyncio.sleep(0.25)

    async def plugins(self) -> list[str]:
        """The plugin modules the agent loaded."""
        return list((await self._get("/plugins")).get("result") or [])

    async def public_did(self) -> PublicDid | None:
        result = (await self._get("/wallet/did/public")).get("result")
        return PublicDid.model_validate(result) if result else None

    # -- AnonCreds objects on the ledger ---------------------------------------------------
    async def create_schema(self, issuer_did: str, name: str, version: str, attributes: list[str]) -> str:
        body = {"schema": {"attrNames": attributes, "issuerId": issuer_did, "name": name, "version": version},
                "options": {}}
        result = await self._post("/anoncreds/schema", body)
        return result["schema_state"]["schema_id"]

    async def create_credential_definition(self, issuer_did: str, schema_id: str, tag: str,
                                           revocation_registry_size: int | None) -> str:
        options: dict[str, Any] = {"support_revocation": revocation_registry_size is not None}
        if revocation_registry_size is not None:
            options["revocation_registry_size"] = revocation_registry_size
        body = {"credential_definition": {"issuerId": issuer_did, "schemaId": schema_id, "tag": tag},
                "options": options}
        result = await self._post("/anoncreds/credential-definition", body)
        return result["credential_definition_state"]["credential_definition_id"]

    async def credential_definition_ids(self, schema_id: str, issuer_id: str | None) -> list[str]:
        found = await self._get("/anoncreds/credential-definitions", schema_id=schema_id, issuer_id=issuer_id)
        return list(found.get("credential_definition_ids") or [])

    async def schema(self, schema_id: str) -> dict:
        """A schema as the ledger has it (`{"schema": {"attrNames", "name", ...}, ...}`)."""
        return await self._get(self._path("/anoncreds/schema/{id}", id=("schema", schema_id)))

    async def credential_definition(self, cred_def_id: str) -> dict:
        """A credential definition as the ledger has it."""
        return await self._get(self._path("/anoncreds/credential-definition/{id}", id=("cred_def", cred_def_id)))

    async def active_revocation_registry(self, cred_def_id: str) -> dict | None:
        try:
            path = self._path("/anoncreds/revocation/active-registry/{id}", id=("cred_def", cred_def_id))
            return (await self._get(path))["result"]
        except AdminApiError as exc:
            if exc.status in (400, 404):
                return None
            raise

    # -- connections (out-of-band 1.1 + DID Exchange 1.1) ----------------------------------
    async def create_invitation(self, *, alias: str | None = None, handshake: bool = True,
                                attachments: list[dict] | None = None, multi_use: bool = False) -> Invitation:
        body: dict[str, Any] = {"alias": alias} if alias else {}
        if handshake:
            body |= {"handshake_protocols": ["https://didcomm.org/didexchange/1.1"], "use_did_method": "did:peer:4"}
        if attachments:
            body["attachments"] = attachments
        record = await self._post("/out-of-band/create-invitation", body, auto_accept="true",
                                  multi_use="true" if multi_use else "false")
        return Invitation.model_validate(record)

    async def receive_invitation(self, invitation: dict, *, alias: str | None = None) -> dict:
        params = {"auto_accept": "true"} | ({"alias": alias} if alias else {})
        return await self._post("/out-of-band/receive-invitation", invitation, **params)

    async def connection(self, connection_id: str) -> ConnectionRecord:
        path = self._path("/connections/{id}", id=("record", connection_id))
        return ConnectionRecord.model_validate(await self._get(path))

    async def connections(self, *, state: str | None = None,
                          invitation_msg_id: str | None = None) -> list[ConnectionRecord]:
        found = await self._get("/connections", state=state, invitation_msg_id=invitation_msg_id)
        return [ConnectionRecord.model_validate(c) for c in found.get("results", [])]

    # -- issue-credential 2.0 (AnonCreds) -------------------------------------------------
    async def send_offer(self, connection_id: str, cred_def_id: str, attributes: dict[str, str],
                         comment: str | None = None) -> CredentialExchange:
        body = {
            "connection_id": self._id("record", connection_id),
            "comment": comment,
            "auto_remove": False,
            # issue as soon as the holder's request arrives: the offer already was the doctor's decision
            "auto_issue": True,
            "credential_preview": {
                "@type": "issue-credential/2.0/credential-preview",
                "attributes": [{"name": k, "value": v} for k, v in attributes.items()],
            },
            "filter": {"anoncreds": {"cred_def_id": cred_def_id}},
        }
        return CredentialExchange.model_validate(await self._post("/issue-credential-2.0/send-offer", body))

    async def credential_exchange(self, cred_ex_id: str) -> CredentialExchange:
        """One exchange with its AnonCreds details (revocation ids on the issuer's side)."""
        details = await self._get(self._path("/issue-credential-2.0/records/{id}", id=("record", cred_ex_id)))
        anoncreds = details.get("anoncreds") or {}
        return CredentialExchange.model_validate({**(details.get("cred_ex_record") or {}),
                                                  "rev_reg_id": anoncreds.get("rev_reg_id"),
                                                  "cred_rev_id": anoncreds.get("cred_rev_id")})

    async def credential_exchanges(self, state: CredExState | None = None) -> list[CredentialExchange]:
        found = await self._get("/issue-credential-2.0/records", state=state.value if state else None)
        return [CredentialExchange.model_validate(item.get("cred_ex_record") or {})
                for item in found.get("results", [])]

    async def send_credential_request(self, cred_ex_id: str) -> None:
        """Accept an offer. The holder's exchange record is removed once the credential is stored and
        acknowledged: it holds a second copy of the credential, and a wallet's exchange records would
        otherwise grow with every prescription it ever received (the agents are started with
        --preserve-exchange-records, which the practices' and pharmacies' controllers need)."""
        await self._post(self._path("/issue-credential-2.0/records/{id}/send-request", id=("record", cred_ex_id)),
                         {"auto_remove": True})

    async def store_credential(self, cred_ex_id: str) -> None:
        await self._post(self._path("/issue-credential-2.0/records/{id}/store", id=("record", cred_ex_id)))

    async def decline_offer(self, cred_ex_id: str, description: str) -> None:
        await self._post(self._path("/issue-credential-2.0/records/{id}/problem-report", id=("record", cred_ex_id)),
                         {"description": description})

    async def delete_credential_exchange(self, cred_ex_id: str) -> None:
        await self._request("DELETE", self._path("/issue-credential-2.0/records/{id}", id=("record", cred_ex_id)))

    async def credentials(self, wql: dict | None = None, page: int = 100) -> list[HeldCredential]:
        """Every credential in the holder's wallet (matching `wql`), page by page."""
        found: list[HeldCredential] = []
        while True:
            batch = (await self._get("/credentials", limit=page, offset=len(found),
                                     wql=json.dumps(wql) if wql else None))["results"]
            found += [HeldCredential.model_validate(c) for c in batch]
            if len(batch) < page:
                return found

    async def credential(self, credential_id: str) -> HeldCredential:
        return HeldCredential.model_validate(
            await self._get(self._path("/credential/{id}", id=("record", credential_id))))

    # -- present-proof 2.0 (AnonCreds) ----------------------------------------------------
    async def send_proof_request(self, connection_id: str, proof_request: dict) -> PresentationExchange:
        body = {"connection_id": self._id("record", connection_id),
                "presentation_request": {"anoncreds": proof_request}, "auto_verify": False, "auto_remove": False}
        return PresentationExchange.model_validate(await self._post("/present-proof-2.0/send-request", body))

    async def create_proof_request(self, proof_request: dict) -> PresentationExchange:
        """A request not bound to a connection, to attach to an out-of-band invitation (QR code)."""
        body = {"presentation_request": {"anoncreds": proof_request}, "auto_verify": False, "auto_remove": False}
        return PresentationExchange.model_validate(await self._post("/present-proof-2.0/create-request", body))

    async def presentation_exchange(self, pres_ex_id: str) -> PresentationExchange:
        path = self._path("/present-proof-2.0/records/{id}", id=("record", pres_ex_id))
        return PresentationExchange.model_validate(await self._get(path))

    async def presentation_exchanges(self, state: PresExState | None = None) -> list[PresentationExchange]:
        found = await self._get("/present-proof-2.0/records", state=state.value if state else None)
        return [PresentationExchange.model_validate(r) for r in found.get("results", [])]

    async def verify_presentation(self, pres_ex_id: str) -> PresentationExchange:
        path = self._path("/present-proof-2.0/records/{id}/verify-presentation", id=("record", pres_ex_id))
        return PresentationExchange.model_validate(await self._post(path))

    async def delete_presentation_exchange(self, pres_ex_id: str) -> None:
        await self._request("DELETE", self._path("/present-proof-2.0/records/{id}", id=("record", pres_ex_id)))

    async def credentials_for_request(self, pres_ex_id: str, page: int = 100,
                                      prescription_id: str | None = None) -> list[CredentialMatch]:
        """Every held credential that answers some of the request's referents. ACA-Py returns 10 unless
        asked for more, so a wallet holding many prescriptions would miss the one the user chose.
        `prescription_id` narrows the search to the credentials of that prescription (a tag query in the
        wallet): a chosen credential is found without reading the whole history."""
        path = self._path("/present-proof-2.0/records/{id}/credentials", id=("record", pres_ex_id))
        # the attribute tag ACA-Py's AnonCreds holder stores each credential with, as WQL. ACA-Py's route
        # only lets through an object whose values are objects, hence `$in`; the value is JSON in a query
        # parameter, which the HTTP client percent-encodes
        narrow = None if prescription_id is None else \
            json.dumps({"attr::prescription_id::value": {"$in": [prescription_id]}})
        merged: dict[str, CredentialMatch] = {}
        start = 0
        while True:
            batch = await self._get(path, start=start, count=page, extra_query=narrow)
            for found in map(CredentialMatch.model_validate, batch):
                # each referent is queried on its own: merge what a credential answers
                seen = merged.setdefault(found.cred_info.referent, found)
                if seen is not found:
                    seen.presentation_referents = sorted(set(seen.presentation_referents)
                                                         | set(found.presentation_referents))
            if len(batch) < page:
                return list(merged.values())
            start += page

    async def send_presentation(self, pres_ex_id: str, anoncreds: dict) -> PresentationExchange:
        path = self._path("/present-proof-2.0/records/{id}/send-presentation", id=("record", pres_ex_id))
        return PresentationExchange.model_validate(await self._post(path, {"anoncreds": anoncreds,
                                                                           "auto_remove": False}))

    async def problem_report(self, pres_ex_id: str, description: str) -> None:
        path = self._path("/present-proof-2.0/records/{id}/problem-report", id=("record", pres_ex_id))
        await self._post(path, {"description": description})

    # -- revocation -----------------------------------------------------------------------
    async def credential_revocation_record(self, cred_ex_id: str) -> dict:
        return (await self._get("/anoncreds/revocation/credential-record",
                                cred_ex_id=self._id("record", cred_ex_id)))["result"]

    async def revoke(self, rev_reg_id: str, cred_rev_id: str, *, connection_id: str | None = None,
                     thread_id: str | None = None, comment: str | None = None) -> dict:
        """Revoke and publish. With a connection, the holder's wallet is told with a revocation
        notification 2.0 (`credential_id` `<rev_reg_id>::<cred_rev_id>`), the form Credo-based wallets
        such as BC Wallet process; ACA-Py needs some thread id for its record, not sent in 2.0."""
        body: dict[str, Any] = {"rev_reg_id": self._id("rev_reg", rev_reg_id),
                                "cred_rev_id": self._id("cred_rev", cred_rev_id), "publish": True}
        if connection_id:
            body |= {"notify": True, "notify_version": "v2_0", "connection_id": self._id("record", connection_id),
                     "thread_id": thread_id or f"indy::{rev_reg_id}::{cred_rev_id}",
                     "comment": comment or "revoked by the prescriber"}
        else:
            body["notify"] = False
        return await self._post("/anoncreds/revocation/revoke", body)

    # -- documents signed with the public DID's key (erx_schemas.signed) -------------------
    async def sign_jws(self, did: str, payload: dict, *, typ: str | None = None) -> str:
        """`payload` signed by the agent with `did`'s key, as a compact JWS (EdDSA). ACA-Py's
        `/wallet/jwt/sign` names the key `did:sov:<did>#key-1`, resolves it to the verkey the ledger
        holds for the DID and signs with the wallet's key for it: the key never leaves the wallet. The
        answer is checked to be a JWS of that kid (erx_schemas.signed), nothing else is returned."""
        body: dict[str, Any] = {"did": self._id("did", did), "payload": payload}
        if typ is not None:
            body["headers"] = {"typ": typ}
        jws = await self._post("/wallet/jwt/sign", body)
        try:
            document = SignedDocument.parse(jws)
        except SignatureInvalid as exc:
            raise AdminApiError("POST", "/wallet/jwt/sign", 502, f"the agent's answer is no JWS: {exc}") from None
        if document.signer_did != did or document.typ != (typ or "JWT"):
            raise AdminApiError("POST", "/wallet/jwt/sign", 502,
                                f"the agent signed as {document.kid} (typ {document.typ}), not as {did}")
        return jws

    async def did_verkey(self, did: str) -> str:
        """The (full, base58) verkey the Indy ledger holds for `did` (a NYM read by the agent). A DID not
        on the ledger is an AdminApiError with status 404."""
        found = LedgerVerkey.model_validate(await self._get("/ledger/did-verkey", did=self._id("did", did)))
        return full_verkey(did, found.verkey)

    # -- basic messages (e.g. a dispense receipt to the patient's wallet) ---------------------
    async def send_message(self, connection_id: str, content: str) -> None:
        """A DIDComm basic message over an active connection (`basicmessages` webhook on the other side)."""
        await self._post(self._path("/connections/{id}/send-message", id=("record", connection_id)),
                         {"content": content})


class LedgerVerkey(_Record):
    """`GET /ledger/did-verkey`: the NYM's verkey (base58; `~abbreviated` if so written)."""

    verkey: str = Field(pattern=r"^~?[1-9A-HJ-NP-Za-km-z]{21,44}$")
