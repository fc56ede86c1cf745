"""The dev chain's transaction journal and the journaling proxy in front of anvil, against a fake anvil:
append and fsync before forwarding, a torn last line, replay in journal order after a restart (new
sends wait), refusal of node-side signing and cheat methods, and the bounded hold."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from erx_chain.journal import Journal, tx_hash_of
from erx_chain.proxy import REFUSED_CODE, ChainProxy, refusal
from erx_core.processes import free_port


def raw_tx() -> str:
    return "0x" + secrets.token_bytes(120).hex()


class FakeAnvil:
    """Just enough of anvil: an instance id, a pool, automining (unless `mining` is cleared), restarts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.instance = "0x" + secrets.token_hex(32)
        self.mined: dict[str, dict[str, Any]] = {}
        self.pool: list[str] = []
        self.sends: list[str] = []  # every eth_sendRawTransaction received, in order
        self.methods: list[str] = []
        self.reject: set[str] = set()
        self.mining = asyncio.Event()
        self.mining.set()
        self.on_send = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        self._miner = asyncio.create_task(self._mine())

    async def stop(self) -> None:
        self._miner.cancel()
        await self._runner.cleanup()

    async def restart(self, keep_blocks: int = 0) -> None:
        """Down, then up as a new instance that lost its pool and everything mined after `keep_blocks`."""
        await self.stop()
        self.instance = "0x" + secrets.token_hex(32)
        self.pool = []
        kept = list(self.mined.items())[:keep_blocks]
        self.mined = dict(kept)
        await self.start()

    async def _mine(self) -> None:
        while True:
            await self.mining.wait()
            while self.pool:
                h = self.pool.pop(0)
                self.mined[h] = {"transactionHash": h, "blockNumber": hex(len(self.mined) + 1), "status": "0x1"}
            await asyncio.sleep(0.005)

    def _one(self, req: dict[str, Any]) -> dict[str, Any]:
        method, params = req["method"], req.get("params") or []
        self.methods.append(method)
        result: Any = None
        if method == "anvil_metadata":
            result = {"instanceId": self.instance, "latestBlockNumber": len(self.mined)}
        elif method == "eth_sendRawTransaction":
            h = tx_hash_of(params[0])
            if self.on_send is not None:
                self.on_send(h)
            self.sends.append(h)
            if h in self.reject:
                return {"jsonrpc": "2.0", "id": req.get("id"), "error": {"code": -32003, "message": "nonce too low"}}
            if h in self.mined:  # as anvil answers for a transaction it mined already
                return {"jsonrpc": "2.0", "id": req.get("id"), "error": {"code": -32003, "message": "nonce too low"}}
            if h in self.pool:
                return {"jsonrpc": "2.0", "id": req.get("id"),
                        "error": {"code": -32003, "message": "transaction already imported"}}
            self.pool.append(h)
            result = h
        elif method == "eth_getTransactionReceipt":
            result = self.mined.get(params[0])
        elif method == "eth_getTransactionByHash":
            h = params[0]
            result = self.mined.get(h) or ({"hash": h, "blockNumber": None} if h in self.pool else None)
        elif method == "eth_blockNumber":
            result = hex(len(self.mined))
        else:
            result = f"forwarded {method}"
        return {"jsonrpc": "2.0", "id": req.get("id"), "result": result}

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if isinstance(body, list):
            return web.json_response([self._one(r) for r in body])
        return web.json_response(self._one(body))


class Harness:
    def __init__(self, tmp_path: Path, anvil: FakeAnvil, fsync=os.fsync, hold_timeout: float = 2.0) -> None:
        self.tmp_path, self.anvil, self.fsync, self.hold_timeout = tmp_path, anvil, fsync, hold_timeout
        self.port = free_port()
        self.journal_file = tmp_path / "journal.jsonl"

    async def start(self) -> ChainProxy:
        self.proxy = ChainProxy(self.anvil.url, Journal.open(self.journal_file, fsync=self.fsync),
                                hold_timeout=self.hold_timeout, reconcile_timeout=5.0, watch_interval=0.05)
        self.runner = web.AppRunner(self.proxy.app())
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.http = aiohttp.ClientSession()
        return self.proxy

    async def stop(self) -> None:
        await self.http.close()
        await self.runner.cleanup()

    async def post(self, payload: Any) -> tuple[int, Any]:
        async with self.http.post(f"http://127.0.0.1:{self.port}", json=payload) as resp:
            return resp.status, await resp.json()

    async def call(self, method: str, *params: Any) -> tuple[int, Any]:
        return await self.post({"jsonrpc": "2.0", "id": 7, "method": method, "params": list(params)})


@pytest.fixture
async def anvil():
    fake = FakeAnvil(free_port())
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def harness(tmp_path, anvil):
    h = Harness(tmp_path, anvil)
    await h.start()
    yield h
    await h.stop()


def journal_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


# -- the journal file ---------------------------------------------------------------------------------
def test_append_is_in_order_durable_and_survives_reopening(tmp_path):
    synced: list[int] = []
    path = tmp_path / "j.jsonl"
    journal = Journal.open(path, fsync=lambda fd: (os.fsync(fd), synced.append(path.stat().st_size)))
    txs = [raw_tx() for _ in range(3)]
    written = journal.append([(tx_hash_of(r), r) for r in txs])
    assert [e.n for e in written] == [0, 1, 2]
    assert synced and synced[-1] == path.stat().st_size, "fsync'ed after the whole group was written"
    assert journal.append([(tx_hash_of(txs[0]), txs[0])]) == [], "a journaled transaction is not written twice"
    journal.close()
    again = Journal.open(path)
    assert [e.raw for e in again.entries] == txs
    assert [line["hash"] for line in journal_lines(path)] == [tx_hash_of(r) for r in txs]
    again.close()


def test_a_torn_last_line_is_ignored_and_cut_off(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal.open(path)
    first, second, third = raw_tx(), raw_tx(), raw_tx()
    journal.append([(tx_hash_of(first), first), (tx_hash_of(second), second)])
    journal.close()
    whole = path.read_bytes()
    with path.open("ab") as f:  # the proxy was killed while writing the next record
        f.write(b'{"n":2,"hash":"0x12ab","raw":"0x' + b"f" * 40)
    reopened = Journal.open(path)
    assert [e.raw for e in reopened.entries] == [first, second]
    assert reopened.torn_bytes > 0
    assert path.read_bytes() == whole, "the torn tail is cut, so the next record starts on its own line"
    reopened.append([(tx_hash_of(third), third)])
    reopened.close()
    assert [e.raw for e in Journal.open(path).entries] == [first, second, third]


def test_a_refused_transaction_is_marked_and_not_pending(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal.open(path)
    a, b = raw_tx(), raw_tx()
    journal.append([(tx_hash_of(a), a), (tx_hash_of(b), b)])
    journal.mark_rejected(tx_hash_of(a), "nonce too low")
    assert [e.raw for e in journal.pending()] == [b]
    journal.close()
    reopened = Journal.open(path)
    assert [e.raw for e in reopened.pending()] == [b]
    # sent again and accepted this time: journaled anew, at the end
    reopened.append([(tx_hash_of(a), a)])
    assert [e.raw for e in reopened.pending()] == [b, a]
    reopened.close()
    assert [e.raw for e in Journal.open(path).pending()] == [b, a]


def test_refused_methods():
    for method in ["eth_sendTransaction", "eth_sign", "eth_signTransaction", "eth_signTypedData_v4",
                   "eth_sendUnsignedTransaction", "personal_sign", "personal_unlockAccount",
                   "anvil_impersonateAccount", "anvil_setBalance", "anvil_setCode", "anvil_reset",
                   "hardhat_setBalance", "evm_mine", "evm_revert", "evm_setNextBlockTimestamp", "miner_start"]:
        assert refusal(method), method
    for method in ["eth_sendRawTransaction", "eth_call", "eth_getTransactionReceipt", "eth_chainId",
                   "eth_estimateGas", "eth_getLogs", "debug_traceTransaction", "anvil_dumpState", "net_version"]:
        assert refusal(method) is None, method


# -- the proxy -----------------------------------------------------------------------------------------
async def test_every_send_is_fsynced_before_it_is_forwarded(tmp_path, anvil):
    harness = Harness(tmp_path, anvil)
    synced_hashes: set[str] = set()

    def fsync(fd: int) -> None:
        os.fsync(fd)
        synced_hashes.update(line["hash"] for line in journal_lines(harness.journal_file) if "hash" in line)

    harness.fsync = fsync
    forwarded_unsynced: list[str] = []
    anvil.on_send = lambda h: None if h in synced_hashes else forwarded_unsynced.append(h)
    await harness.start()
    try:
        txs = [raw_tx() for _ in range(20)]
        # concurrent single requests and one batch mixing sends with reads
        results = await asyncio.gather(*(harness.call("eth_sendRawTransaction", r) for r in txs[:10]),
                                       harness.post([{"jsonrpc": "2.0", "id": i, "method": "eth_sendRawTransaction",
                                                      "params": [r]} for i, r in enumerate(txs[10:])]
                                                    + [{"jsonrpc": "2.0", "id": "b", "method": "eth_blockNumber"}]))
        assert [body["result"] for _, body in results[:10]] == [tx_hash_of(r) for r in txs[:10]]
        status, batch = results[10]
        assert status == 200 and [a["id"] for a in batch] == list(range(10)) + ["b"]
        assert [a["result"] for a in batch[:10]] == [tx_hash_of(r) for r in txs[10:]]
        assert forwarded_unsynced == []
        assert sorted(anvil.sends) == sorted(tx_hash_of(r) for r in txs)
        # journal order is the order anvil received them in
        assert [e.tx_hash for e in harness.proxy.journal.entries] == anvil.sends
    finally:
        await harness.stop()


async def test_after_a_restart_lost_transactions_are_resent_in_journal_order_before_new_ones(harness, anvil):
    txs = [raw_tx() for _ in range(6)]
    for r in txs:
        status, body = await harness.call("eth_sendRawTransaction", r)
        assert status == 200 and body["result"] == tx_hash_of(r)
    await asyncio.sleep(0.05)
    assert all(tx_hash_of(r) in anvil.mined for r in txs)

    anvil.mining.clear()  # the restarted node mines only when we say so
    anvil.sends.clear()
    await anvil.restart(keep_blocks=2)  # rolled back: the last 4 are lost
    for _ in range(100):  # the watchdog notices the new instance and re-sends what is missing
        if len(anvil.sends) == 4:
            break
        await asyncio.sleep(0.01)
    assert anvil.sends == [tx_hash_of(r) for r in txs[2:]], "re-sent in journal order"
    assert not harness.proxy.ready.is_set()
    newcomer = raw_tx()
    new_send = asyncio.create_task(harness.call("eth_sendRawTransaction", newcomer))
    read = asyncio.create_task(harness.call("eth_getTransactionReceipt", tx_hash_of(txs[-1])))
    await asyncio.sleep(0.3)
    assert len(anvil.sends) == 4, "a new send waits until the re-sent ones are mined"
    assert not new_send.done() and not read.done(), "new sends and reads wait for reconciliation"
    anvil.mining.set()
    status, body = await new_send
    assert status == 200 and body["result"] == tx_hash_of(newcomer)
    assert anvil.sends == [tx_hash_of(r) for r in txs[2:]] + [tx_hash_of(newcomer)]
    status, receipt = await read
    assert receipt["result"]["transactionHash"] == tx_hash_of(txs[-1]), "the read saw the reconciled chain"
    report = harness.proxy.reports[-1]
    assert (report.missing, report.resent, report.rejected) == (4, 4, 0)


async def test_a_restart_is_noticed_by_its_instance_id_even_without_downtime(harness, anvil):
    tx = raw_tx()
    await harness.call("eth_sendRawTransaction", tx)
    await asyncio.sleep(0.05)
    anvil.mined.clear()
    anvil.instance = "0x" + secrets.token_hex(32)  # a new node answered on the same port
    status, body = await harness.call("eth_getTransactionReceipt", tx_hash_of(tx))
    assert status == 200 and body["result"]["transactionHash"] == tx_hash_of(tx)


async def test_a_refused_transaction_is_answered_and_never_replayed(harness, anvil):
    bad, good = raw_tx(), raw_tx()
    anvil.reject.add(tx_hash_of(bad))
    _, body = await harness.call("eth_sendRawTransaction", bad)
    assert body["error"]["message"] == "nonce too low"
    await harness.call("eth_sendRawTransaction", good)
    await asyncio.sleep(0.05)
    anvil.sends.clear()
    await anvil.restart()
    await harness.call("eth_blockNumber")
    assert anvil.sends == [tx_hash_of(good)]
    assert tx_hash_of(bad) in Journal.open(harness.journal_file).rejected


async def test_a_mined_transaction_sent_again_is_still_re_applied_after_a_rollback(harness, anvil):
    """A client resuming after a crash re-sends a transaction that was mined: the node answers "nonce too
    low", which must not mark it refused, or a later rollback would not bring it back."""
    tx = raw_tx()
    await harness.call("eth_sendRawTransaction", tx)
    await asyncio.sleep(0.05)
    _, body = await harness.call("eth_sendRawTransaction", tx)  # resume()
    assert body["error"]["message"] == "nonce too low"
    assert tx_hash_of(tx) not in harness.proxy.journal.rejected
    anvil.sends.clear()
    await anvil.restart()  # lost
    _, receipt = await harness.call("eth_getTransactionReceipt", tx_hash_of(tx))
    assert receipt["result"]["transactionHash"] == tx_hash_of(tx)
    assert anvil.sends == [tx_hash_of(tx)]


async def test_signing_and_cheat_methods_are_refused_and_never_reach_the_node(harness, anvil):
    for method in ["eth_sendTransaction", "personal_sign", "anvil_impersonateAccount", "evm_mine",
                   "hardhat_setBalance", "eth_signTypedData_v4"]:
        status, body = await harness.call(method, {})
        assert status == 200 and body["error"]["code"] == REFUSED_CODE and body["id"] == 7, method
    _, batch = await harness.post([{"jsonrpc": "2.0", "id": 1, "method": "anvil_setBalance", "params": []},
                                   {"jsonrpc": "2.0", "id": 2, "method": "eth_chainId", "params": []},
                                   {"jsonrpc": "2.0", "id": 3, "method": "anvil_dumpState", "params": []}])
    assert batch[0]["error"]["code"] == REFUSED_CODE
    assert batch[1]["result"] == "forwarded eth_chainId" and batch[2]["result"] == "forwarded anvil_dumpState"
    forbidden = {"eth_sendTransaction", "personal_sign", "anvil_impersonateAccount", "evm_mine",
                 "hardhat_setBalance", "eth_signTypedData_v4", "anvil_setBalance"}
    assert not forbidden & set(anvil.methods)


async def test_a_node_that_stays_down_gets_a_transient_error_and_nothing_is_journaled(tmp_path, anvil):
    harness = Harness(tmp_path, anvil, hold_timeout=0.5)
    await harness.start()
    try:
        await harness.call("eth_blockNumber")
        await anvil.stop()
        await asyncio.sleep(0.2)  # the watchdog notices
        status, body = await harness.call("eth_blockNumber")
        assert status == 503 and body["error"]["code"] == -32000
        tx = raw_tx()
        status, body = await harness.call("eth_sendRawTransaction", tx)
        assert status == 503, "not accepted while the node is down"
        assert tx_hash_of(tx) not in {e.tx_hash for e in Journal.open(harness.journal_file).entries}
        await anvil.start()
        for _ in range(50):  # answered again once the proxy has reconciled with the node
            status, body = await harness.call("eth_blockNumber")
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200
    finally:
        await harness.stop()


async def test_a_send_journaled_just_before_the_node_died_is_applied_and_acknowledged(tmp_path, anvil):
    harness = Harness(tmp_path, anvil, hold_timeout=3.0)
    await harness.start()
    try:
        await harness.call("eth_blockNumber")
        tx = raw_tx()
        # the node dies between the journal's fsync and the forward
        original = harness.proxy.journal.append

        def append_then_die(raws):
            written = original(raws)
            asyncio.run_coroutine_threadsafe(anvil.stop(), loop)
            return written

        loop = asyncio.get_running_loop()
        harness.proxy.journal.append = append_then_die
        send = asyncio.create_task(harness.call("eth_sendRawTransaction", tx))
        await asyncio.sleep(0.3)
        harness.proxy.journal.append = original
        assert not send.done()
        await anvil.start()
        status, body = await send
        assert status == 200 and body["result"] == tx_hash_of(tx)
        assert tx_hash_of(tx) in anvil.mined
    finally:
        await harness.stop()


async def test_a_node_down_for_longer_than_the_hold_timeout_is_answered_at_once(tmp_path, anvil):
    harness = Harness(tmp_path, anvil, hold_timeout=0.5)
    await harness.start()
    try:
        await harness.call("eth_blockNumber")
        await anvil.stop()
        await asyncio.sleep(0.8)
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, _ = await harness.call("eth_chainId")
        assert status == 503 and loop.time() - started < 0.2, "no hold once the node is known to be down"
        await anvil.start()
        for _ in range(50):
            status, _ = await harness.call("eth_chainId")
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200
    finally:
        await harness.stop()
