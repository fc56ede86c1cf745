"""Helpers for tests that start real processes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from erx_core.acapy_admin import AcaPyAdmin
from erx_core.processes import free_port
from erx_core.settings import AgentSettings, ChainSettings, PoolSettings, Settings, TailsSettings
from pydantic import SecretStr


def _ports(n: int) -> list[int]:
    seen: set[int] = set()
    while len(seen) < n:
        seen.add(free_port())
    return sorted(seen)


def isolated_settings(home, *, block_time_s: float | None = 1.0) -> Settings:
    """Settings for a private network under `home`, on ports nobody else uses right now."""
    p = _ports(8 + 2 + 12)
    agents = [
        AgentSettings(name="doctor", role="doctor", label="Test Doctor", inbound_port=p[10], admin_port=p[11],
                      controller_port=p[12]),
        AgentSettings(name="pharmacy", role="pharmacy", label="Test Pharmacy", inbound_port=p[13],
                      admin_port=p[14], controller_port=p[15]),
        AgentSettings(name="pharmacy-b", role="pharmacy", label="Test Pharmacy B", inbound_port=p[16],
                      admin_port=p[17], controller_port=p[18]),
        AgentSettings(name="patient", role="patient", label="Test Patient", inbound_port=p[19], admin_port=p[20],
                      controller_port=p[21], public_did=False),
    ]
    return Settings(
        home=home,
        pool=PoolSettings(node_ports=p[0:8:2], client_ports=p[1:8:2], network_name="erx-test"),
        chain=ChainSettings(port=p[8], block_time_s=block_time_s),
        tails=TailsSettings(port=p[9]),
        agents=agents,
    )


def manual_wallet(name: str = "patient-manual") -> AgentSettings:
    """A patient wallet that waits for its user (auto_respond off), on free ports: the browser tests
    accept and share through its page."""
    p = _ports(3)
    return AgentSettings(name=name, role="patient", label="Test Patient (manual wallet)", inbound_port=p[0],
                         admin_port=p[1], controller_port=p[2], public_did=False, auto_respond=False)


def encodings(value: str) -> list[bytes]:
    """The ways a string could show up in chain data: raw, UTF-16, hashed, ABI-encoded, and hex of each."""
    import hashlib

    from eth_abi import encode as abi_encode
    from eth_utils import keccak

    raw = value.encode()
    forms = [raw, value.encode("utf-16-le"), keccak(raw), hashlib.sha256(raw).digest(), abi_encode(["string"], [value])]
    return forms + [f.hex().encode() for f in forms]


async def chain_haystack(rpc) -> bytes:
    """Everything the chain holds, lower-cased: every transaction (with input), every log, the full state."""
    import gzip
    import json

    latest = int(await rpc("eth_blockNumber", []), 16)
    blocks = [await rpc("eth_getBlockByNumber", [hex(n), True]) for n in range(latest + 1)]
    txs = [tx for block in blocks for tx in block["transactions"]]
    logs = await rpc("eth_getLogs", [{"fromBlock": "0x0", "toBlock": hex(latest)}])
    dump = gzip.decompress(bytes.fromhex((await rpc("anvil_dumpState", []))[2:]))
    return b"".join([dump, json.dumps(txs).encode(), json.dumps(logs).encode()]
                    + [bytes.fromhex(tx["input"][2:]) for tx in txs]
                    + [bytes.fromhex(log["data"][2:]) for log in logs]).lower()


class LocalSigner:
    """Signs as an agent's `sign_jws` does (EdDSA, kid did:sov:<did>#key-1), with a key of its own: for
    unit tests whose fake agent must sign pickup codes or receipts (tests/unit/test_signed_documents.py
    checks the format against ACA-Py itself)."""

    def __init__(self) -> None:
        import nacl.signing

        self.key = nacl.signing.SigningKey.generate()

    @property
    def verkey(self) -> str:
        import base58

        return base58.b58encode(bytes(self.key.verify_key)).decode()

    async def sign_jws(self, did: str, payload: dict, *, typ: str | None = None) -> str:
        import json

        from erx_schemas.signed import b64url_encode, did_url

        header = {"alg": "EdDSA", "kid": did_url(did), **({"typ": typ} if typ else {})}
        signing_input = ".".join(b64url_encode(json.dumps(part, separators=(",", ":")).encode())
                                 for part in (header, payload))
        return f"{signing_input}.{b64url_encode(self.key.sign(signing_input.encode()).signature)}"


@contextlib.asynccontextmanager
async def admin_of(app: web.Application) -> AsyncIterator[AcaPyAdmin]:
    """The typed agent port pointed at `app`, a fake admin API served for real on 127.0.0.1."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    admin = AcaPyAdmin(f"http://127.0.0.1:{port}", SecretStr("k"))
    try:
        yield admin
    finally:
        await admin.close()
        await runner.cleanup()
