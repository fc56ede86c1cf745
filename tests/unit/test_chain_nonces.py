"""The ledger client's nonces and receipt waits through chain faults, on real anvil processes (npm
@foundry-rs/anvil): a stale nonce is re-read from the chain, a receipt that does not come is a typed,
resumable ReceiptTimeout (never a revert), the wait survives a node restart, and behind the journaling
proxy a node that lost its last blocks costs no timeout at all."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from erx_chain import anvil_argv, dev_accounts, find_anvil, wait_for_rpc
from erx_chain.journal import Journal
from erx_chain.proxy import ChainProxy
from erx_contracts import ChainConfig, PrescriptionTokenClient, new_prescription_key
from erx_contracts.errors import ChainError, ChainUnavailable, ContractError, ReceiptTimeout, RpcError
from erx_core.processes import free_port

try:
    find_anvil()
except FileNotFoundError as exc:  # pragma: no cover - `./erx` installs it
    pytest.skip(f"anvil is not installed: {exc}", allow_module_level=True)

ACCOUNTS = dev_accounts(n_doctors=1, n_pharmacies=1)


class Node:
    """One anvil on a fixed port (so it can be restarted in place), our own process, stopped by its pid."""

    def __init__(self, tmp_path: Path, *, state: bool = False, state_interval: int = 60) -> None:
        self.port = free_port()
        self.log = tmp_path / f"anvil-{self.port}.log"
        self.state_file = tmp_path / "state.json" if state else None
        self.state_interval = state_interval
        self.popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        argv = anvil_argv(self.port, state_file=self.state_file, state_interval=self.state_interval, order="fifo")
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        await wait_for_rpc(self.url)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, sig)
            self.popen.wait(15)

    async def rpc(self, method: str, *params) -> object:
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                 "params": list(params)}) as resp:
                return (await resp.json())["result"]


@pytest.fixture
async def node(tmp_path):
    n = Node(tmp_path, state=True)
    await n.start()
    yield n
    n.stop()


async def deploy(url: str, tx_timeout: float = 10.0) -> PrescriptionTokenClient:
    admin = await PrescriptionTokenClient.deploy(ChainConfig(rpc_url=url, tx_timeout=tx_timeout), ACCOUNTS.authority)
    await admin.add_issuer(ACCOUNTS.doctors[0].address)
    await admin.add_dispenser(ACCOUNTS.pharmacies[0].address)
    return admin


async def create(doctor: PrescriptionTokenClient, redemptions: int = 1):
    key = new_prescription_key()
    now = await doctor.chain_time()
    result = await doctor.create(key.address, redemptions=redemptions, not_before=now - 60, not_after=now + 86400)
    return key, result


def cached_nonce(client: PrescriptionTokenClient) -> int | None:
    return client._conn.nonces[client.address].next


async def test_a_nonce_too_low_answer_rereads_the_nonce_and_the_send_goes_through(node):
    admin = await deploy(node.url)
    # a second process acting as the same account: its own connection, its own nonce cache
    other = await PrescriptionTokenClient.connect(admin.config, ACCOUNTS.authority)
    try:
        await other.add_issuer(ACCOUNTS.doctors[0].address)  # fills its cache
        stale = cached_nonce(other)
        outsiders = dev_accounts(n_doctors=3).doctors[1:]
        await admin.add_issuer(outsiders[0].address)
        await admin.add_issuer(outsiders[1].address)
        await other.remove_issuer(outsiders[0].address)  # "nonce too low", re-read, signed again
        assert cached_nonce(other) == stale + 3
        assert not await admin.is_issuer(outsiders[0].address) and await admin.is_issuer(outsiders[1].address)
    finally:
        await other.close()
        await admin.close()


async def test_a_send_that_certainly_failed_raises_and_rereads_the_nonce(node):
    admin = await deploy(node.url)
    try:
        doctor = admin.for_account(ACCOUNTS.doctors[0])
        await create(doctor)
        real_rpc = doctor.rpc

        async def refused_once(method, params):
            if method == "eth_sendRawTransaction":
                doctor.rpc = real_rpc
                raise ChainUnavailable("connection refused", maybe_delivered=False)
            return await real_rpc(method, params)

        doctor.rpc = refused_once
        with pytest.raises(ChainUnavailable) as caught:
            await create(doctor)
        assert caught.value.maybe_delivered is False
        assert cached_nonce(doctor) is None, "re-read from the chain before the next transaction"
        _, result = await create(doctor)
        assert result.block_number > 0
    finally:
        await admin.close()


async def test_a_send_whose_answer_was_lost_is_not_a_failure_and_is_not_sent_twice(node):
    admin = await deploy(node.url)
    try:
        doctor = admin.for_account(ACCOUNTS.doctors[0])
        real_rpc = doctor.rpc
        before = int(await node.rpc("eth_getTransactionCount", ACCOUNTS.doctors[0].address, "latest"), 16)

        async def answer_lost(method, params):
            if method == "eth_sendRawTransaction":
                doctor.rpc = real_rpc
                await real_rpc(method, params)  # the node took it; its answer never arrived
                raise ChainUnavailable("server disconnected")
            return await real_rpc(method, params)

        doctor.rpc = answer_lost
        key, result = await create(doctor)
        assert (await doctor.status(key.address)).exists
        after = int(await node.rpc("eth_getTransactionCount", ACCOUNTS.doctors[0].address, "latest"), 16)
        assert after == before + 1
    finally:
        await admin.close()


async def test_no_receipt_in_time_is_a_typed_resumable_timeout_not_a_revert(node):
    admin = await deploy(node.url, tx_timeout=1.5)
    try:
        doctor = admin.for_account(ACCOUNTS.doctors[0])
        await node.rpc("evm_setAutomine", False)  # nothing gets mined for now
        key = new_prescription_key()
        now = await doctor.chain_time()
        with pytest.raises(ReceiptTimeout) as caught:
            await doctor.create(key.address, redemptions=1, not_before=now - 60, not_after=now + 86400)
        timeout = caught.value
        assert isinstance(timeout, ChainError) and not isinstance(timeout, ContractError)
        assert timeout.tx_hash.startswith("0x") and timeout.raw_tx.startswith("0x")
        assert cached_nonce(doctor) is None
        await node.rpc("evm_mine")
        result = await doctor.resume(timeout.tx_hash, timeout.raw_tx)
        assert result.tx_hash == timeout.tx_hash
        assert (await doctor.status(key.address)).exists
    finally:
        await node.rpc("evm_setAutomine", True)
        await admin.close()


async def test_the_receipt_wait_survives_a_node_crash_and_resends_what_the_node_lost(node):
    admin = await deploy(node.url, tx_timeout=30)
    try:
        doctor = admin.for_account(ACCOUNTS.doctors[0])
        await create(doctor)
        node.stop(signal.SIGTERM)  # clean stop: the state so far is on disk
        await node.start()
        await node.rpc("evm_setAutomine", False)
        key = new_prescription_key()
        now = await doctor.chain_time()
        pending = asyncio.create_task(doctor.create(key.address, redemptions=1, not_before=now - 60,
                                                    not_after=now + 86400))
        for _ in range(100):  # in the node's pool, not mined
            if int(await node.rpc("eth_getTransactionCount", doctor.address, "pending"), 16) > \
                    int(await node.rpc("eth_getTransactionCount", doctor.address, "latest"), 16):
                break
            await asyncio.sleep(0.05)
        node.stop(signal.SIGKILL)  # the pool is gone with the process
        await asyncio.sleep(1.5)  # receipt polls fail meanwhile: transient
        assert not pending.done()
        await node.start()  # automine again, from the state of the clean stop
        result = await pending
        assert result.block_number > 0
        assert (await doctor.status(key.address)).exists
    finally:
        await admin.close()


async def test_a_cache_ahead_of_a_rolled_back_node_costs_one_receipt_timeout_then_resyncs(node):
    """Without the journaling proxy: the node loses two mined creates; the doctor's next transaction
    waits behind the nonce gap and times out (it may still be mined later); the one after goes through."""
    admin = await deploy(node.url, tx_timeout=2)
    try:
        doctor = admin.for_account(ACCOUNTS.doctors[0])
        node.stop(signal.SIGTERM)
        await node.start()
        await create(doctor)
        await create(doctor)
        node.stop(signal.SIGKILL)  # both lost: the state file holds what the clean stop dumped
        await node.start()
        with pytest.raises(ReceiptTimeout):
            await create(doctor)
        assert cached_nonce(doctor) is None
        key, result = await create(doctor)
        assert (await doctor.status(key.address)).exists
    finally:
        await admin.close()


async def test_behind_the_journaling_proxy_a_rolled_back_node_costs_no_timeout(tmp_path):
    node = Node(tmp_path, state=True)
    await node.start()
    proxy_port = free_port()
    proxy = ChainProxy(node.url, Journal.open(tmp_path / "journal.jsonl"), hold_timeout=5, watch_interval=0.05)
    runner = web.AppRunner(proxy.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", proxy_port).start()
    admin = await deploy(f"http://127.0.0.1:{proxy_port}", tx_timeout=5)
    try:
        doctor = admin.for_account(ACCOUNTS.doctors[0])
        pharmacy = admin.for_account(ACCOUNTS.pharmacies[0])
        node.stop(signal.SIGTERM)
        await node.start()
        key, _ = await create(doctor)
        await pharmacy.spend(key.private_key)
        node.stop(signal.SIGKILL)  # create and spend lost by the node
        await node.start()
        status = await pharmacy.status(key.address)
        assert status.exists and status.remaining == 0, "re-applied in order: the create, then the spend"
        started = asyncio.get_running_loop().time()
        await create(doctor)  # the cached nonce is right again: no wait behind a gap
        assert asyncio.get_running_loop().time() - started < 2
        assert proxy.reports[-1].resent >= 2
        with pytest.raises(RpcError):  # the node's own accounts cannot be used through the proxy
            await admin.rpc("eth_sendTransaction", [{"from": ACCOUNTS.authority.address, "to": key.address}])
    finally:
        await admin.close()
        await runner.cleanup()
        node.stop()


async def test_unreachable_and_503_are_certain_failures_other_breaks_are_not(tmp_path):
    closed = free_port()
    refused = await _rpc_error(f"http://127.0.0.1:{closed}")
    assert refused.maybe_delivered is False

    async def busy(_: web.Request) -> web.Response:
        return web.json_response({"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "reconciling"}},
                                 status=503)

    async def hang_up(request: web.Request) -> web.Response:
        await request.read()
        request.transport.close()  # the request arrived; the answer never does
        return web.Response()

    for handler, delivered in ((busy, False), (hang_up, True)):
        app = web.Application()
        app.router.add_post("/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            assert (await _rpc_error(f"http://127.0.0.1:{port}")).maybe_delivered is delivered, handler.__name__
        finally:
            await runner.cleanup()


async def _rpc_error(url: str) -> ChainUnavailable:
    """What the client's own provider raises for a send (no connect(): it checks the chain id first)."""
    from web3 import AsyncHTTPProvider, AsyncWeb3

    from erx_contracts.client import _RETRY_READS_ONLY, _Connection

    w3 = AsyncWeb3(AsyncHTTPProvider(url, request_kwargs={"timeout": aiohttp.ClientTimeout(total=3)},
                                     exception_retry_configuration=_RETRY_READS_ONLY))
    client = PrescriptionTokenClient(ChainConfig(rpc_url=url), ACCOUNTS.authority, _Connection(w3))
    try:
        with pytest.raises(ChainUnavailable) as caught:
            await client.rpc("eth_sendRawTransaction", ["0x00"])
        return caught.value
    finally:
        await client.close()
