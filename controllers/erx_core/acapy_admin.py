"""A typed port to one ACA-Py agent's admin API.

Small on purpose: each method is one admin call with its pydantic result. Errors come back as
`AdminApiError` carrying the HTTP status and ACA-Py's reason text, never as a bare aiohttp error.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, SecretStr


class AdminApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, reason: str):
        super().__init__(f"{method} {path} -> {status}: {reason}")
        self.status = status
        self.reason = reason


class AgentUnreachable(AdminApiError):
    pass


class PublicDid(BaseModel):
    model_config = ConfigDict(extra="ignore")
    did: str
    verkey: str


class SchemaResult(BaseModel):
    schema_id: str


class CredDefResult(BaseModel):
    credential_definition_id: str


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

    async def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None) -> Any:
        try:
            async with self._http().request(method, self.base_url + path, json=json, params=params) as resp:
                if resp.status >= 400:
                    raise AdminApiError(method, path, resp.status, (await resp.text()).strip())
                if resp.content_type == "application/json":
                    return await resp.json()
                return await resp.text()
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise AgentUnreachable(method, path, 0, f"agent admin API at {self.base_url} unreachable: {exc}") from exc

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params=params or None)

    async def post(self, path: str, body: Any = None, **params: Any) -> Any:
        return await self.request("POST", path, json=body if body is not None else {}, params=params or None)

    # -- health ---------------------------------------------------------------------------
    async def is_ready(self) -> bool:
        try:
            return bool((await self.get("/status/ready")).get("ready"))
        except AdminApiError:
            return False

    async def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not await self.is_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent at {self.base_url} not ready after {timeout_s:.0f} s")
            await asyncio.sleep(0.25)

    async def public_did(self) -> PublicDid | None:
        result = (await self.get("/wallet/did/public")).get("result")
        return PublicDid.model_validate(result) if result else None

    # -- AnonCreds objects on the ledger ---------------------------------------------------
    async def create_schema(self, issuer_did: str, name: str, version: str, attributes: list[str]) -> str:
        body = {"schema": {"attrNames": attributes, "issuerId": issuer_did, "name": name, "version": version},
                "options": {}}
        result = await self.post("/anoncreds/schema", body)
        return result["schema_state"]["schema_id"]

    async def create_credential_definition(self, issuer_did: str, schema_id: str, tag: str,
                                           revocation_registry_size: int | None) -> str:
        options: dict[str, Any] = {"support_revocation": revocation_registry_size is not None}
        if revocation_registry_size is not None:
            options["revocation_registry_size"] = revocation_registry_size
        body = {"credential_definition": {"issuerId": issuer_did, "schemaId": schema_id, "tag": tag},
                "options": options}
        result = await self.post("/anoncreds/credential-definition", body)
        return result["credential_definition_state"]["credential_definition_id"]

    async def active_revocation_registry(self, cred_def_id: str) -> dict | None:
        try:
            return (await self.get(f"/anoncreds/revocation/active-registry/{cred_def_id}"))["result"]
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
        record = await self.post("/out-of-band/create-invitation", body, auto_accept="true",
                                 multi_use="true" if multi_use else "false")
        return Invitation.model_validate(record)

    async def receive_invitation(self, invitation: dict, *, alias: str | None = None) -> dict:
        params = {"auto_accept": "true"} | ({"alias": alias} if alias else {})
        return await self.post("/out-of-band/receive-invitation", invitation, **params)

    async def connection(self, connection_id: str) -> dict:
        return await self.get(f"/connections/{connection_id}")

    # -- issue-credential 2.0 (AnonCreds) -------------------------------------------------
    async def send_offer(self, connection_id: str, cred_def_id: str, attributes: dict[str, str],
                         comment: str | None = None) -> dict:
        body = {
            "connection_id": connection_id,
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
        return await self.post("/issue-credential-2.0/send-offer", body)

    async def credential_exchange(self, cred_ex_id: str) -> dict:
        return await self.get(f"/issue-credential-2.0/records/{cred_ex_id}")

    async def send_credential_request(self, cred_ex_id: str) -> dict:
        return await self.post(f"/issue-credential-2.0/records/{cred_ex_id}/send-request", {})

    async def credentials(self, wql: dict | None = None, page: int = 100) -> list[dict]:
        """Every credential in the holder's wallet (matching `wql`), page by page."""
        found: list[dict] = []
        while True:
            params: dict[str, Any] = {"limit": page, "offset": len(found)}
            if wql:
                params["wql"] = json.dumps(wql)
            batch = (await self.get("/credentials", **params))["results"]
            found += batch
            if len(batch) < page:
                return found

    # -- present-proof 2.0 (AnonCreds) ----------------------------------------------------
    async def send_proof_request(self, connection_id: str, proof_request: dict) -> dict:
        body = {"connection_id": connection_id, "presentation_request": {"anoncreds": proof_request},
                "auto_verify": False, "auto_remove": False}
        return await self.post("/present-proof-2.0/send-request", body)

    async def create_proof_request(self, proof_request: dict) -> dict:
        """A request not bound to a connection, to attach to an out-of-band invitation (QR code)."""
        body = {"presentation_request": {"anoncreds": proof_request}, "auto_verify": False, "auto_remove": False}
        return await self.post("/present-proof-2.0/create-request", body)

    async def presentation_exchange(self, pres_ex_id: str) -> dict:
        return await self.get(f"/present-proof-2.0/records/{pres_ex_id}")

    async def verify_presentation(self, pres_ex_id: str) -> dict:
        return await self.post(f"/present-proof-2.0/records/{pres_ex_id}/verify-presentation", {})

    async def credentials_for_request(self, pres_ex_id: str, page: int = 100) -> list[dict]:
        """Every held credential that answers some of the request's referents. ACA-Py returns 10 unless
        asked for more, so a wallet holding many prescriptions would miss the one the user chose."""
        merged: dict[str, dict] = {}
        start = 0
        while True:
            batch = await self.get(f"/present-proof-2.0/records/{pres_ex_id}/credentials", start=start, count=page)
            for found in batch:  # each referent is queried on its own: merge what a credential answers
                seen = merged.setdefault(found["cred_info"]["referent"], found)
                if seen is not found:
                    seen["presentation_referents"] = sorted(set(seen.get("presentation_referents", []))
                                                            | set(found.get("presentation_referents", [])))
            if len(batch) < page:
                return list(merged.values())
            start += page

    async def send_presentation(self, pres_ex_id: str, anoncreds: dict) -> dict:
        return await self.post(f"/present-proof-2.0/records/{pres_ex_id}/send-presentation",
                               {"anoncreds": anoncreds, "auto_remove": False})

    async def problem_report(self, pres_ex_id: str, description: str) -> None:
        await self.post(f"/present-proof-2.0/records/{pres_ex_id}/problem-report", {"description": description})

    # -- revocation -----------------------------------------------------------------------
    async def revoke(self, rev_reg_id: str, cred_rev_id: str, *, connection_id: str | None = None,
                     thread_id: str | None = None, comment: str | None = None) -> dict:
        body: dict[str, Any] = {"rev_reg_id": rev_reg_id, "cred_rev_id": cred_rev_id, "publish": True}
        if connection_id and thread_id:  # tell the holder's wallet (revocation notification 2.0)
            body |= {"notify": True, "notify_version": "v1_0", "connection_id": connection_id,
                     "thread_id": thread_id, "comment": comment or "revoked by the prescriber"}
        else:
            body["notify"] = False
        return await self.post("/anoncreds/revocation/revoke", body)


class Invitation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    invi_msg_id: str
    invitation_url: str
    invitation: dict
    oob_id: str | None = None
