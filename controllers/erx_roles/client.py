"""A small client for the controllers' JSON APIs (used by the demo and the tests)."""

from __future__ import annotations

from typing import Any

import aiohttp
from pydantic import SecretStr

ON_BEHALF_OF = "Erx-On-Behalf-Of"  # as erx_roles.http names it (this client imports nothing of the server)


class ControllerApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: Any):
        super().__init__(f"{method} {path} -> {status}: {body}")
        self.status, self.body = status, body


class ControllerClient:
    """One token's client; with `on_behalf_of`, every request acts for that staff member (the header
    `Erx-On-Behalf-Of`, docs/staff-and-audit.md)."""

    def __init__(self, base_url: str, api_key: SecretStr, timeout_s: float = 90.0, on_behalf_of: str | None = None):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key.get_secret_value()}"}
        if on_behalf_of:
            headers[ON_BEHALF_OF] = on_behalf_of
        self.on_behalf_of = on_behalf_of
        self._session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> ControllerClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        async with self._session.request(method, self.base_url + path, json=body, params=params or None) as resp:
            data = await resp.json() if resp.content_type == "application/json" else await resp.text()
            if resp.status >= 400:
                raise ControllerApiError(method, path, resp.status, data)
            return data

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, **params)

    async def post(self, path: str, body: Any = None, **params: Any) -> Any:
        return await self.request("POST", path, body if body is not None else {}, **params)

    async def every_page(self, path: str, page_size: int = 200) -> list[Any]:
        """Every item of a paged list (`{"items", "next", "total"}`), following `next` to the end."""
        items: list[Any] = []
        after = None
        while True:
            page = await self.get(path, limit=page_size, **({"after": after} if after else {}))
            items += page["items"]
            if not (after := page["next"]):
                return items
