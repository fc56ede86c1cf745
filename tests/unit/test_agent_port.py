"""The typed agent port: no request value becomes an admin path of its own, and nothing but the port
speaks to the agent.

A fake admin API (a real aiohttp server on 127.0.0.1) records the raw paths it is asked for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp import web
from erx_core import ids
from erx_core.acapy_admin import AdminApiError

from tests.support import admin_of

GOOD = "6f1d4f0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
HOSTILE = ["../shutdown", "../../status/ready", "%2e%2e%2fshutdown", "a/b", GOOD + "/../shutdown", GOOD + "\n",
           "", "x" * 100_000, "\u0000", "?x=1", "#frag", " " + GOOD]
CONTROLLERS = Path(__file__).resolve().parents[2] / "controllers"


@pytest.fixture
async def fake_agent():
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"connection_id": GOOD, "state": "active", "pres_ex_id": GOOD, "results": [],
                                  "result": {}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    async with admin_of(app) as admin:
        yield admin, seen


@pytest.mark.parametrize("hostile", HOSTILE)
async def test_a_hostile_id_never_reaches_the_agent(fake_agent, hostile):
    admin, seen = fake_agent
    for call in (admin.connection(hostile), admin.presentation_exchange(hostile), admin.verify_presentation(hostile),
                 admin.delete_presentation_exchange(hostile), admin.credential_exchange(hostile),
                 admin.send_proof_request(hostile, {}), admin.send_offer(hostile, "cd", {}),
                 admin.credential(hostile), admin.store_credential(hostile)):
        with pytest.raises(AdminApiError) as refused:
            await call
        assert refused.value.status == 404
    assert seen == [], "a hostile id was sent to the agent"


async def test_valid_ids_reach_the_agent_as_one_encoded_segment(fake_agent):
    admin, seen = fake_agent
    await admin.connection(GOOD)
    await admin.presentation_exchange(GOOD)
    cred_def = "Th7MpTaRZVRYnPiabds81Y:3:CL:12:prescription"
    await admin.active_revocation_registry(cred_def)
    assert seen == [f"/connections/{GOOD}", f"/present-proof-2.0/records/{GOOD}",
                    "/anoncreds/revocation/active-registry/Th7MpTaRZVRYnPiabds81Y:3:CL:12:prescription"]  # yarl: ":" needs no escape


def test_id_formats():
    assert ids.is_valid("record", GOOD)
    assert not any(ids.is_valid("record", h) for h in HOSTILE)
    assert ids.is_valid("cred_def", "Th7MpTaRZVRYnPiabds81Y:3:CL:12:prescription")
    assert not ids.is_valid("cred_def", "Th7MpTaRZVRYnPiabds81Y:3:CL:12:pre/../x")
    assert ids.is_valid("rev_reg", "Th7MpTaRZVRYnPiabds81Y:4:Th7MpTaRZVRYnPiabds81Y:3:CL:12:prescription:CL_ACCUM:0")
    assert ids.is_valid("cred_rev", "17") and not ids.is_valid("cred_rev", "17/..")


# Only the port builds admin paths: services, pages and the platform call its typed methods.
RAW_ADMIN = re.compile(r"admin\.(get|post|request|_get|_post|_request)\(|[\"'](/connections|/issue-credential|"
                       r"/present-proof|/out-of-band|/anoncreds|/credentials?\b|/wallet|/revocation)")


def test_no_admin_path_is_built_outside_the_port():
    offenders = []
    for source in CONTROLLERS.rglob("*.py"):
        # the port itself; and the Credo wallet's client, which talks to that wallet's own control API
        if source.name in ("acapy_admin.py", "credo_wallet.py"):
            continue
        for number, line in enumerate(source.read_text().splitlines(), 1):
            if RAW_ADMIN.search(line):
                offenders.append(f"{source.relative_to(CONTROLLERS)}:{number}: {line.strip()}")
    assert offenders == []
