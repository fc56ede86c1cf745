"""A typed port to one ACA-Py agent's admin API.

Small on purpose: each method is one admin call with its pydantic result. Errors come back as
`AdminApiError` carrying the HTTP status and ACA-Py's reason text, never as a bare aiohttp error.
"""

from __future__ import annotations

import asyncio
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
