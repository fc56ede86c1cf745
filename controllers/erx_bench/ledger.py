"""`erx bench ledger`: token creations and spends on the local EVM node, 1 s blocks.

What is measured, on a fresh node started for the run (so earlier state cannot slow it down):
  * the node's own ceiling: trivial transactions (0-value transfers) at saturation;
  * token operations (half creations by doctors, half spends by pharmacies) at several offered rates
    and at saturation: throughput and latency from submission to the block that includes them;
  * batched creation (`createBatch`).
The client pre-signs (coincurve), sends JSON-RPC batches over several connections, and learns
inclusion from each new block instead of polling receipts. Signing time is reported separately.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aiohttp
from coincurve import PrivateKey
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from erx_bench.stats import latency_summary, machine, table
from erx_chain.accounts import dev_accounts
from erx_chain.node import anvil_process, wait_for_rpc
from erx_contracts.artifact import load_artifact
from erx_contracts.client import PrescriptionTokenClient, sign_spend
from erx_contracts.config import ChainConfig
from erx_core.processes import ProcessSpec, Supervisor, free_port

CHAIN_ID = 1337
GAS_LIMIT = 10_000_000_000
SPEND_TYPEHASH = keccak(text="Spend(address token,address dispenser,uint16 remaining)")


# -- signing ------------------------------------------------------------------------------------
class FastSpendSigner:
    """EIP-712 spend authorisations signed with coincurve directly (the digest layout is the contract's;
    checked against `erx_contracts.sign_spend` before use)."""

    def __init__(self, contract: str):
        domain_typehash = keccak(text="EIP712Domain(string name,string version,uint256 chainId,address "
                                      "verifyingContract)")
        self.domain = keccak(abi_encode(["bytes32", "bytes32", "bytes32", "uint256", "address"], [
            domain_typehash, keccak(text="ErxPrescriptionToken"), keccak(text="1"), CHAIN_ID, contract]))

    def sign(self, private_key: bytes, token: str, dispenser: str, remaining: int) -> bytes:
        struct = keccak(abi_encode(["bytes32", "address", "address", "uint16"],
                                   [SPEND_TYPEHASH, token, dispenser, remaining]))
        digest = keccak(b"\x19\x01" + self.domain + struct)
        sig = PrivateKey(private_key).sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes([sig[64] + 27])


@dataclass
class Signed:
    kind: str  # create | spend | transfer | batch
    raw: str
    tx_hash: str
    ops: int = 1  # token operations this transaction carries


@dataclass
class Sender:
    """One account's locally tracked nonce."""

    account: Any
    nonce: int = 0

    def sign(self, to: str, data: str, gas: int, kind: str, ops: int = 1) -> Signed:
        tx = {"chainId": CHAIN_ID, "nonce": self.nonce, "gas": gas, "gasPrice": 0, "to": to, "value": 0,
              "data": data}
        self.nonce += 1
        signed = self.account.sign_transaction(tx)
        return Signed(kind, signed.raw_transaction.to_0x_hex(), signed.hash.to_0x_hex(), ops)


# -- sending and observing ------------------------------------------------------------------------
@dataclass
class Chain:
    rpc_url: str
    connections: int = 4
    batch: int = 100
    mined_at: dict[str, float] = field(default_factory=dict)
    submitted_at: dict[str, float] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    block_sizes: list[int] = field(default_factory=list)

    async def __aenter__(self) -> Chain:
        self._sessions = [aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
                          for _ in range(self.connections)]
        self._rr = itertools.cycle(self._sessions)
        self._stop = asyncio.Event()
        self._last_block = int(await self.rpc("eth_blockNumber", []), 16)
        self._watcher = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        await self._watcher
        for s in self._sessions:
            await s.close()

    async def rpc(self, method: str, params: list) -> Any:
        async with next(self._rr).post(self.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                           "params": params}) as resp:
            body = await resp.json()
        if "error" in body:
            raise RuntimeError(f"{method}: {body['error']}")
        return body["result"]

    async def _watch(self) -> None:
        """Each new block's transactions are stamped with the time the block was first seen."""
        while not self._stop.is_set():
            head = int(await self.rpc("eth_blockNumber", []), 16)
            for n in range(self._last_block + 1, head + 1):
                block = await self.rpc("eth_getBlockByNumber", [hex(n), False])
                now = time.monotonic()
                self.block_sizes.append(len(block["transactions"]))
                for h in block["transactions"]:
                    self.mined_at[h] = now
            self._last_block = head
            await asyncio.sleep(0.02)

    async def send(self, txs: list[Signed]) -> None:
        """JSON-RPC batches, spread over the connections, all at once."""
        async def post(chunk: list[Signed]) -> None:
            body = [{"jsonrpc": "2.0", "id": i, "method": "eth_sendRawTransaction", "params": [t.raw]}
                    for i, t in enumerate(chunk)]
            now = time.monotonic()
            for t in chunk:
                self.submitted_at[t.tx_hash] = now
            async with next(self._rr).post(self.rpc_url, json=body) as resp:
                replies = await resp.json(content_type=None)
            if isinstance(replies, dict):  # the whole batch was refused
                self.rejected += [str(replies.get("error"))] * len(chunk)
                return
            for reply in replies:
                if "error" in reply:
                    self.rejected.append(str(reply["error"].get("message")))
        await asyncio.gather(*(post(txs[i:i + self.batch]) for i in range(0, len(txs), self.batch)))

    async def paced(self, txs: list[Signed], rate: float, tick_s: float = 0.05) -> None:
        """Offer `txs` at `rate` per second, a slice every tick."""
        per_tick = max(1, round(rate * tick_s))
        started = time.monotonic()
        for i, start in enumerate(range(0, len(txs), per_tick)):
            await asyncio.sleep(max(0.0, started + i * tick_s - time.monotonic()))
            asyncio.ensure_future(self.send(txs[start:start + per_tick]))
        await asyncio.sleep(0)

    async def wait_mined(self, txs: list[Signed], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(t.tx_hash not in self.mined_at for t in txs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def result(self, name: str, txs: list[Signed], offered: float | None = None) -> dict[str, Any]:
        mined = [t for t in txs if t.tx_hash in self.mined_at]
        latencies = [self.mined_at[t.tx_hash] - self.submitted_at[t.tx_hash] for t in mined]
        ops = sum(t.ops for t in mined)
        if mined:
            first = min(self.submitted_at[t.tx_hash] for t in txs)
            last = max(self.mined_at[t.tx_hash] for t in mined)
            # the block interval quantises inclusion: count the phase from first submission to last block
            span = max(last - first, 1e-6)
        else:
            span = 0.0
        kinds = {k: sum(t.ops for t in mined if t.kind == k) for k in ("create", "spend", "transfer", "batch")}
        return {"phase": name, "offered_per_s": offered, "sent_tx": len(txs), "mined_tx": len(mined),
                "ops_per_s": round(ops / span, 1) if span else 0.0,
                **{f"{k}_per_s": round(v / span, 1) if span else 0.0 for k, v in kinds.items() if v},
                **latency_summary(latencies)}


# -- the run ------------------------------------------------------------------------------------------
@dataclass
class Plan:
    # Offered rates, the last beyond what the node absorbs: that phase is the saturation point. (Sending
    # everything at once instead measures the node's intake queue, not throughput.)
    rates: list[float]
    phase_s: float
    ceiling_txs: int
    batch_txs: int
    batch_size: int = 100

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(rates=[100.0, 300.0], phase_s=2.0, ceiling_txs=300, batch_txs=2)
        return cls(rates=[250.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0], phase_s=5.0, ceiling_txs=12000,
                   batch_txs=20)


async def run_ledger(quick: bool = False, n_doctors: int = 16, n_pharmacies: int = 16, progress=print) -> dict:
    plan = Plan.of(quick)
    with TemporaryDirectory(prefix="erx-bench-ledger-") as tmp:
        port = free_port()
        node = anvil_process(port, Path(tmp) / "anvil.log", name="bench-anvil", chain_id=CHAIN_ID, block_time=1,
                             gas_limit=GAS_LIMIT, state_file=None, state_interval=None)
        supervisor = Supervisor(Path(tmp) / "run")
        record = supervisor.start(ProcessSpec(name=node.name, argv=node.argv, env=node.env,
                                              log_file=node.log_file, ports=[port]))
        try:
            await wait_for_rpc(node.rpc_url, timeout=20)
            return await _measure(node.rpc_url, plan, n_doctors, n_pharmacies, progress, node_pid=record.pid)
        finally:
            supervisor.stop(node.name)


class CpuMeter:
    """Where a phase's CPU time went: the node process versus this client (the profile behind a figure)."""

    def __init__(self, node_pid: int):
        self.node_pid = node_pid

    def _node_s(self) -> float:
        fields = Path(f"/proc/{self.node_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def start(self) -> None:
        self._t0, self._node0, self._client0 = time.monotonic(), self._node_s(), time.process_time()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        node, client = self._node_s() - self._node0, time.process_time() - self._client0
        return {"node_cpu_pct": round(100 * node / wall, 1), "client_cpu_pct": round(100 * client / wall, 1)}


async def _measure(rpc_url: str, plan: Plan, n_doctors: int, n_pharmacies: int, progress,
                   node_pid: int) -> dict:
    cpu = CpuMeter(node_pid)
    config = ChainConfig(rpc_url=rpc_url, chain_id=CHAIN_ID)
    authority = dev_accounts(0, 0).authority
    doctors = [Sender(Account.create()) for _ in range(n_doctors)]
    pharmacies = [Sender(Account.create()) for _ in range(n_pharmacies)]
    admin = await PrescriptionTokenClient.deploy(config, authority)
    try:
        await asyncio.gather(*(admin.add_issuer(d.account.address) for d in doctors),
                             *(admin.add_dispenser(p.account.address) for p in pharmacies))
        contract = admin.contract_address
        now = await admin.chain_time()
    finally:
        await admin.close()
    progress(f"ledger bench: contract {contract}, {n_doctors} doctors, {n_pharmacies} pharmacies onboarded")

    abi = Web3().eth.contract(abi=load_artifact().abi)
    signer = FastSpendSigner(contract)
    window = (now - 3600, now + 30 * 86400)
    doctor_cycle, pharmacy_cycle = itertools.cycle(doctors), itertools.cycle(pharmacies)

    key = Account.create()
    assert signer.sign(key.key, key.address, pharmacies[0].account.address, 1) == sign_spend(
        key.key.to_0x_hex(), chain_id=CHAIN_ID, contract_address=contract,
        dispenser=pharmacies[0].account.address, remaining=1), "fast signer disagrees with the contract's digest"

    def creates(n: int) -> tuple[list[Signed], list[Any]]:
        keys = [Account.create() for _ in range(n)]
        return [next(doctor_cycle).sign(contract, abi.encode_abi("create", [k.address, 1, *window]), 120_000,
                                         "create") for k in keys], keys

    def spends(keys: list[Any]) -> list[Signed]:
        out = []
        for k in keys:
            pharmacy = next(pharmacy_cycle)
            sig = signer.sign(k.key, k.address, pharmacy.account.address, 1)
            out.append(pharmacy.sign(contract, abi.encode_abi("spend", [k.address, 1, sig]), 100_000, "spend"))
        return out

    def batch_create(keys: list[Any]) -> list[Signed]:
        out = []
        for i in range(0, len(keys), plan.batch_size):
            rows = [(k.address, 1, *window) for k in keys[i:i + plan.batch_size]]
            out.append(next(doctor_cycle).sign(contract, abi.encode_abi("createBatch", [rows]),
                                               60_000 + 40_000 * len(rows), "batch", ops=len(rows)))
        return out

    results: list[dict] = []
    async with Chain(rpc_url) as chain:
        # The node's ceiling: 0-value transfers from zero-balance accounts (gas price 0).
        movers = [Sender(Account.create()) for _ in range(8)]
        t0 = time.monotonic()
        transfers = [m.sign(m.account.address, "0x", 21_000, "transfer")
                     for m, _ in zip(itertools.cycle(movers), range(plan.ceiling_txs))]
        sign_rate = len(transfers) / (time.monotonic() - t0)
        cpu.start()
        await chain.send(transfers)
        await chain.wait_mined(transfers, 60)
        ceiling = chain.result("ceiling: transfers at saturation", transfers) | cpu.stop()
        results.append(ceiling)
        progress(f"ledger bench: ceiling {ceiling['ops_per_s']} tx/s")

        async def prepared_tokens(n: int) -> list[Any]:
            """Tokens created up front (in batches) so that a phase can spend them."""
            keys = [Account.create() for _ in range(n)]
            txs = batch_create(keys)
            await chain.send(txs)
            await chain.wait_mined(txs, 60)
            return keys

        for rate in plan.rates:
            n = int(rate * plan.phase_s)
            spend_keys = await prepared_tokens(n // 2)
            t0 = time.monotonic()
            create_txs, _ = creates(n - n // 2)
            spend_txs = spends(spend_keys)
            mixed = _interleave(create_txs, spend_txs)
            progress(f"ledger bench: offering {rate:.0f} ops/s for {plan.phase_s:.0f} s "
                     f"(signed {len(mixed)} in {time.monotonic() - t0:.1f} s)")
            cpu.start()
            await chain.paced(mixed, rate)
            await chain.wait_mined(mixed, plan.phase_s + 30)
            results.append(chain.result(f"offered {rate:.0f}/s", mixed, rate) | cpu.stop())

        keys = [Account.create() for _ in range(plan.batch_txs * plan.batch_size)]
        batched = batch_create(keys)
        await chain.send(batched)
        await chain.wait_mined(batched, 60)
        results.append(chain.result(f"createBatch x{plan.batch_size}", batched))
        rejected = len(chain.rejected)
        if chain.rejected:
            progress(f"ledger bench: {rejected} transactions rejected, e.g. {chain.rejected[0]}")

    rate_phases = [r for r in results if r["offered_per_s"]]
    # Kept up: everything offered was included, 95 % of it within two 1 s blocks.
    sustained = [r for r in rate_phases if r["mined_tx"] == r["sent_tx"] and (r["p95_latency_s"] or 99) <= 2.0]
    best = max(sustained or rate_phases, key=lambda r: r["ops_per_s"])
    summary = {
        "token_ops_per_s": best["ops_per_s"],
        "create_tx_per_s": best.get("create_per_s", 0.0),
        "spend_tx_per_s": best.get("spend_per_s", 0.0),
        "p50_latency_s": best["p50_latency_s"],
        "p95_latency_s": best["p95_latency_s"],
        "ceiling_tx_per_s": ceiling["ops_per_s"],
        "ratio_to_ceiling": round(best["ops_per_s"] / ceiling["ops_per_s"], 3) if ceiling["ops_per_s"] else None,
        "at_offered_per_s": best["offered_per_s"],
        "sustained": bool(sustained),
        "saturation_ops_per_s": max(r["ops_per_s"] for r in rate_phases),
        "batched_tokens_per_s": results[-1]["ops_per_s"],
        "client_sign_tx_per_s": round(sign_rate, 1),
        "rejected_tx": rejected,
    }
    return {"bench": "ledger", "quick": plan.ceiling_txs < 1000, "block_time_s": 1, "machine": machine(),
            "summary": summary, "phases": results}


def _interleave(a: list[Signed], b: list[Signed]) -> list[Signed]:
    return [t for pair in itertools.zip_longest(a, b) for t in pair if t is not None]


def render(report: dict) -> str:
    text = _render_own(report)
    if caliper := report.get("caliper"):
        text += "\n\nHyperledger Caliper (same contract, same node settings):\n" + table(
            caliper["rounds"], ["name", "succ", "fail", "send_rate_tps", "throughput_tps", "avg_latency_s",
                                "max_latency_s"]) + f"\nreport: {caliper.get('report_html')}"
    return text


def _render_own(report: dict) -> str:
    cols = ["phase", "offered_per_s", "sent_tx", "mined_tx", "ops_per_s", "create_per_s", "spend_per_s",
            "p50_latency_s", "p95_latency_s", "p99_latency_s", "node_cpu_pct", "client_cpu_pct"]
    s = report["summary"]
    return (table(report["phases"], cols) + "\n\n"
            f"token operations: {s['token_ops_per_s']}/s {'sustained' if s['sustained'] else 'NOT sustained'} "
            f"at {s['at_offered_per_s']:.0f}/s offered ({s['ratio_to_ceiling']} of the node's "
            f"{s['ceiling_tx_per_s']} trivial tx/s), p50 {s['p50_latency_s']} s, p95 {s['p95_latency_s']} s; "
            f"saturation {s['saturation_ops_per_s']}/s; batched creation {s['batched_tokens_per_s']} tokens/s")
