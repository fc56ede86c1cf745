"""`erx up` on real processes: the pool, the EVM node, the tails server and the ACA-Py agents.

One private network (throw-away state directory, free ports) is started for the session by the
`network` fixture through the same `Network.up()` that `./erx up` runs. The resume test stops and
restarts it, so it comes last in this file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time

import aiohttp
import base58
import pytest
from eth_account import Account

from erx_contracts.client import PrescriptionTokenClient, new_prescription_key
from erx_cli.launch import SetupError
from erx_cli.system import LocalSystem as Network
from erx_core.processes import PortInUse
from erx_indy.ledger import IndyLedger, Role
from tests.support import isolated_settings

pytestmark = pytest.mark.integration


async def read_nym(genesis, did: str, timeout_s: float = 10.0):
    """A state-proven read; a validator may lag a fresh write for a moment."""
    async with await IndyLedger.open(genesis) as ledger:
        deadline = time.monotonic() + timeout_s
        while (record := await ledger.get_nym(did)) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return record


async def test_status_reports_every_component_healthy(network: Network):
    status = await network.status()
    doc = json.loads(json.dumps(status.model_dump(mode="json")))
    assert doc["healthy"] is True
    agents = {a.name for a in network.settings.agents}
    assert set(doc["components"]) == {"indy-pool", "chain", "tails"} | {f"agent-{a}" for a in agents} | {
        f"controller-{a}" for a in agents}
    for name, comp in doc["components"].items():
        assert comp["healthy"] is True, (name, comp)
        assert isinstance(comp["detail"], str) and comp["detail"]
    assert doc["components"]["indy-pool"]["participating"] == 4
    assert doc["components"]["indy-pool"]["genesis_file"] == str(network.genesis_file)
    assert doc["components"]["chain"]["rpc_url"] == network.rpc_url
    assert doc["components"]["chain"]["chain_id"] == network.settings.chain.chain_id


async def test_each_organisation_has_its_own_public_did_on_the_pool(network: Network):
    dids = {}
    for agent in network.settings.agents:
        async with network.admin(agent.name) as admin:
            public = await admin.public_did()
        if not agent.public_did:
            assert public is None, "the patient's wallet must not have a public DID"
            continue
        record = await read_nym(network.genesis_file, public.did)
        assert record is not None, f"{agent.name}'s DID {public.did} is not on the pool"
        assert record.role == Role.ENDORSER
        assert record.verkey == public.verkey
        assert record.proof.participants, "read was not backed by a multi-signed state proof"
        dids[agent.name] = public.did
    assert len(set(dids.values())) == len(dids), "organisations must not share a DID"


async def test_doctor_publishes_schema_and_revocable_credential_definition(network: Network):
    async with network.admin("doctor") as doctor:
        did = (await doctor.public_did()).did
        schema_id = await doctor.create_schema(did, "erx-network-test", "1.0", ["medication", "valid_until"])
        cred_def_id = await doctor.create_credential_definition(did, schema_id, "net", revocation_registry_size=8)
        registry = None
        for _ in range(120):
            if registry := await doctor.active_revocation_registry(cred_def_id):
                break
            await asyncio.sleep(0.25)
        assert registry is not None, "no active revocation registry for the revocable credential definition"
        # The schema and credential definition are read back from the ledger by another agent.
        async with network.admin("pharmacy") as pharmacy:
            schema = await pharmacy.schema(schema_id)
            cred_def = await pharmacy.credential_definition(cred_def_id)
    assert schema["schema"]["attrNames"] and set(schema["schema"]["attrNames"]) == {"medication", "valid_until"}
    assert cred_def["credential_definition"]["value"]["revocation"], "credential definition is not revocable"

    tails_hash = registry["tails_hash"]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{network.tails_url}/hash/{tails_hash}") as resp:
            assert resp.status == 200
            tails = await resp.read()
    assert base58.b58encode(hashlib.sha256(tails).digest()).decode() == tails_hash


async def test_gas_free_transaction_from_a_zero_balance_account_is_mined(network: Network):
    doctor = network.chain_account("doctor")
    client = await PrescriptionTokenClient.connect(network.chain_config(), doctor)
    try:
        assert int(await client.rpc("eth_getBalance", [doctor.address, "latest"]), 16) == 0
        key = new_prescription_key()
        now = await client.chain_time()
        result = await client.create(key.address, redemptions=2, not_before=now - 60, not_after=now + 86400)
        assert result.block_number > 0
        status = await client.status(key.address)
        assert status.exists and status.remaining == 2
        assert int(await client.rpc("eth_getBalance", [doctor.address, "latest"]), 16) == 0
    finally:
        await client.close()


async def test_a_taken_port_fails_fast_and_names_the_component(tmp_path):
    settings = isolated_settings(tmp_path)
    with socket.socket() as squatter:
        squatter.bind((settings.host, settings.tails.port))
        squatter.listen()
        net = Network(settings)
        with pytest.raises(PortInUse, match=f"tails: port {settings.tails.port}"):
            await net.network._start_tails()
    assert not net.supervisor.running()


async def test_missing_node_python_fails_fast_with_what_to_do(tmp_path):
    settings = isolated_settings(tmp_path)
    settings.pool.base_python = tmp_path / "no-such-python3.8"
    with pytest.raises(SetupError, match="pyenv install 3.8"):
        await Network(settings).up()


async def test_agent_that_cannot_reach_the_pool_fails_fast_with_its_log(network: Network, tmp_path):
    """An agent pointed at a pool that does not answer exits; `up` says so and shows why."""
    settings = isolated_settings(tmp_path)
    lonely = Network(settings)  # another system's doctor, joined to the session's network's descriptor...
    org = lonely.org("doctor")
    org.init(lonely.org_settings(settings.agent("doctor")), network.authority.descriptor())
    genesis = org.genesis_file.read_text()
    for real, unused in zip(network.settings.pool.client_ports + network.settings.pool.node_ports,
                            settings.pool.client_ports + settings.pool.node_ports):
        genesis = genesis.replace(f'"client_port":{real}', f'"client_port":{unused}').replace(
            f'"node_port":{real}', f'"node_port":{unused}')
    org.genesis_file.write_text(genesis)  # ... but given a genesis whose validators do not answer
    try:
        with pytest.raises(SetupError, match="agent-doctor exited while starting"):
            await org._start_agent()
    finally:
        org.down()


async def test_down_then_up_resumes_on_the_same_ledgers_and_wallets(network: Network):
    # something on each ledger to find again
    async with network.admin("doctor") as doctor:
        schema_id = await doctor.create_schema((await doctor.public_did()).did, "erx-resume-test", "1.0", ["x"])
    token = new_prescription_key().address
    async with await PrescriptionTokenClient.connect(network.chain_config(), network.chain_account("doctor")) as c:
        now = await c.chain_time()
        await c.create(token, redemptions=3, not_before=now - 60, not_after=now + 86400)
    before = await network.status()
    dids = {n: c.public_did for n, c in before.components.items() if n.startswith("agent-")}
    contract = before.components["chain"].contract_address

    stopped = network.down()
    assert {"chain", "tails", "agent-doctor", "indy-Node1"} <= set(stopped)
    assert network.supervisor.running() == []
    down = await network.status()
    assert not down.healthy
    assert all(not c.healthy for c in down.components.values())

    await network.up()
    after = await network.status()
    assert after.healthy
    assert {n: c.public_did for n, c in after.components.items() if n.startswith("agent-")} == dids
    assert after.components["chain"].contract_address == contract
    async with network.admin("pharmacy") as pharmacy:
        schema = await pharmacy.schema(schema_id)
    assert schema["schema"]["name"] == "erx-resume-test"
    async with await PrescriptionTokenClient.connect(network.chain_config(), Account.create()) as c:
        assert (await c.status(token)).remaining == 3
