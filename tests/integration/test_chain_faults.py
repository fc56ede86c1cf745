"""Chain crashes on the real network: SIGKILL of the EVM node (by the pid the supervisor recorded), then
`Network.up()` restarts it behind the journaling proxy, which re-applies what the node lost before it
forwards anything else.

For the whole module the node dumps its state only once an hour (instead of every second), and it is
restarted once with that setting first: each kill then certainly rolls it back to that restart, so
every transaction since must come back from the proxy's journal. Each test ends with the invariant over
every token this module created: on-chain remaining = prescribed − dispensed records of both
pharmacies, and no check left `dispensing`.
"""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import pytest
from eth_account import Account

from erx_contracts.client import PrescriptionTokenClient
from erx_cli.system import LocalSystem as Network
from erx_core.store import Store
from erx_roles.pharmacy import StoredCheck
from erx_roles.scenario import Scenario, sample_order

pytestmark = pytest.mark.integration

DOCTOR, PATIENT, PHARMACY_A, PHARMACY_B = "doctor", "patient", "pharmacy", "pharmacy-b"
PHARMACIES = (PHARMACY_A, PHARMACY_B)


@pytest.fixture(scope="module")
async def flow(network: Network):
    interval = network.settings.chain.state_interval_s
    network.settings.chain.state_interval_s = 3600
    network.supervisor.stop("chain")  # SIGTERM: anvil dumps its state and exits
    await network.up()
    s = Scenario(network)
    s.cred_def_id = await s.onboard(DOCTOR, list(PHARMACIES))
    s.connection_id, _ = await s.connect(DOCTOR, PATIENT)
    s.created = []  # (token address, redemptions) of every prescription this module issued
    try:
        yield s
    finally:
        await s.close()
        network.settings.chain.state_interval_s = interval
        network.supervisor.stop("chain")
        await network.up()


async def issue(flow: Scenario, redemptions: int) -> tuple[dict, str]:
    prescription = await flow.issue(DOCTOR, flow.connection_id, sample_order(redemptions=redemptions))
    assert prescription["state"] == "issued", prescription
    flow.created.append((prescription["token_address"], redemptions))
    return prescription, await flow.credential_for(PATIENT, prescription["prescription_id"])


async def kill_chain(network: Network) -> None:
    record = network.supervisor.record("chain")
    assert record is not None, "the chain node is not running"
    os.kill(record.pid, signal.SIGKILL)
    while network.supervisor.record("chain") is not None:
        await asyncio.sleep(0.01)


async def proxy_health(network: Network) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{network.rpc_url}/health") as resp:
            return await resp.json()


async def last_reconciliation_after(network: Network, before: int) -> dict:
    health = await proxy_health(network)
    assert health["ready"] is True
    assert len(health["reconciliations"]) > before or len(health["reconciliations"]) == 20, health
    return health["reconciliations"][-1]


async def token_status(network: Network, token: str):
    async with await PrescriptionTokenClient.connect(network.chain_config(), Account.create()) as chain:
        return await chain.status(token)


async def all_checks(flow: Scenario, pharmacy: str) -> list[dict]:
    checks, after = [], None
    while True:
        page = await flow.client(pharmacy).get("/api/checks", **({"after": after} if after else {}))
        if isinstance(page, list):  # an unpaged list
            return page
        checks += page["items"]
        if not (after := page.get("next")):
            return checks


async def assert_invariant(network: Network, flow: Scenario) -> None:
    checks = [c for pharmacy in PHARMACIES for c in await all_checks(flow, pharmacy)]
    assert not [c["check_id"] for c in checks if c["state"] == "dispensing"], "a check was left dispensing"
    for token, prescribed in flow.created:
        dispensed = sum(1 for c in checks if c["state"] == "dispensed"
                        and (c.get("token_address") or "").lower() == token.lower())
        status = await token_status(network, token)
        assert status.exists, f"token {token} is gone from the chain"
        assert status.remaining == prescribed - dispensed, (token, prescribed, dispensed, status)


async def test_a_node_killed_right_after_a_dispense_does_not_give_the_redemption_back(network: Network,
                                                                                        flow: Scenario):
    prescription, cred = await issue(flow, redemptions=1)
    first = await flow.redeem(PHARMACY_A, PATIENT, cred)
    assert first["state"] == "dispensed", first
    before = len((await proxy_health(network))["reconciliations"])
    await kill_chain(network)

    await network.up()
    reconciled = await last_reconciliation_after(network, before)
    assert reconciled["resent"] >= 2, f"the create and the spend were not re-applied: {reconciled}"
    second = await flow.redeem(PHARMACY_B, PATIENT, cred)
    assert second["state"] == "refused" and second["refusal"]["reason"] == "already_redeemed", second
    assert (await token_status(network, prescription["token_address"])).remaining == 0
    await assert_invariant(network, flow)


async def test_a_node_killed_mid_dispense_ends_dispensed_not_unknown_token(network: Network, flow: Scenario):
    prescription, cred = await issue(flow, redemptions=2)
    check = await flow.present(PHARMACY_A, PATIENT, cred)
    assert check["state"] == "verified", check
    store = Store(network.org(PHARMACY_A).home / "controller.db")
    checks = store.table("check", StoredCheck)
    dispense = asyncio.create_task(flow.client(PHARMACY_A).post(f"/api/checks/{check['check_id']}/dispense"))
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while not checks.get(check["check_id"]).spend_tx_hash:
            assert asyncio.get_running_loop().time() < deadline, "the spend was never journaled"
            await asyncio.sleep(0.005)
    finally:
        store.close()
    before = len((await proxy_health(network))["reconciliations"])
    await kill_chain(network)

    await network.up()
    dispensed = await dispense  # the pharmacy's receipt wait outlives the node's restart
    assert dispensed["state"] == "dispensed", dispensed
    reconciled = await last_reconciliation_after(network, before)
    assert reconciled["resent"] >= 1, reconciled
    status = await token_status(network, prescription["token_address"])
    assert status.exists, "unknown_token: the token's creation was lost"
    assert status.remaining == 1
    view = await flow.client(DOCTOR).get(f"/api/prescriptions/{prescription['prescription_id']}")
    assert view["status"] == "redeemed 1 of 2", view
    await assert_invariant(network, flow)


async def test_a_node_killed_right_after_an_issue_keeps_the_token(network: Network, flow: Scenario):
    prescription, cred = await issue(flow, redemptions=3)
    before = len((await proxy_health(network))["reconciliations"])
    await kill_chain(network)

    await network.up()
    reconciled = await last_reconciliation_after(network, before)
    assert reconciled["resent"] >= 1, reconciled
    status = await token_status(network, prescription["token_address"])
    assert status.exists and status.remaining == 3 and not status.cancelled
    # and it is as good as before: a pharmacy dispenses it
    assert (await flow.redeem(PHARMACY_B, PATIENT, cred))["state"] == "dispensed"
    await assert_invariant(network, flow)
