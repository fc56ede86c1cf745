"""Revocable issuance under concurrency, on the real network: 50 prescriptions issued at once get 50
distinct revocation ids (ACA-Py issue 3738 is worked around by the agents' plugin), and revoking one
revokes it and nothing else, as the ledger's registry shows."""

from __future__ import annotations

import asyncio

import pytest

from erx_cli.system import LocalSystem as Network
from erx_indy.ledger import IndyLedger
from erx_roles.scenario import Scenario, sample_order

pytestmark = pytest.mark.integration

DOCTOR, PATIENT, PHARMACY = "doctor", "patient", "pharmacy"
CONCURRENT = 50


@pytest.fixture(scope="module")
async def scenario(network: Network):
    s = Scenario(network)
    await s.onboard(DOCTOR, [PHARMACY])
    s.connection_id, _ = await s.connect(DOCTOR, PATIENT)
    yield s
    await s.close()


async def test_concurrent_revocable_issuance_gives_unique_revocation_ids(network: Network, scenario: Scenario):
    async with network.admin(DOCTOR) as admin:
        assert "erx_agents.acapy_plugins.unique_revocation_ids" in await admin.plugins()
    orders = [sample_order(quantity=i + 1) for i in range(CONCURRENT)]
    issued = await asyncio.gather(*(scenario.issue(DOCTOR, scenario.connection_id, order) for order in orders))
    assert [p["state"] for p in issued] == ["issued"] * CONCURRENT, [p.get("error") for p in issued]
    ids = [(p["rev_reg_id"], p["cred_rev_id"]) for p in issued]
    assert all(rev_reg and cred_rev for rev_reg, cred_rev in ids)
    assert len(set(ids)) == CONCURRENT, "two credentials share a revocation id"

    # revoke a few, one by one: after each, the ledger marks exactly the ones revoked so far (on top
    # of what other tests of this session revoked in the same registries)
    revoked: set[tuple[str, int]] = set()
    async with await IndyLedger.open(network.genesis_file) as ledger:
        before = {r: await ledger.revoked_indexes(r) for r in {r for r, _ in ids}}
        for prescription in issued[:: CONCURRENT // 5]:
            after = await scenario.revoke(DOCTOR, prescription["prescription_id"])
            assert after["state"] == "revoked", after
            revoked.add((prescription["rev_reg_id"], int(prescription["cred_rev_id"])))
            for rev_reg_id in {r for r, _ in ids}:
                on_ledger = await ledger.revoked_indexes(rev_reg_id)
                assert on_ledger == before[rev_reg_id] | {i for r, i in revoked if r == rev_reg_id}

    # a sibling that was not revoked still verifies; a revoked one is refused
    kept = issued[1]
    check = await scenario.present(PHARMACY, PATIENT, await scenario.credential_for(PATIENT, kept["prescription_id"]))
    assert check["state"] == "verified", check
    gone = issued[0]
    check = await scenario.present(PHARMACY, PATIENT, await scenario.credential_for(PATIENT, gone["prescription_id"]))
    assert check["state"] == "refused" and check["refusal"]["reason"] == "revoked", check
