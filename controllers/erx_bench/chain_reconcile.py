"""Measures how the journaling proxy recovers a SIGKILLed anvil: N journaled transactions missing.

For each N: a fresh anvil (1 s blocks, state dumped on SIGTERM only) and the proxy, as processes on free
ports in a temporary directory; the token contract is deployed and the node restarted cleanly; N
`create` transactions are sent through the proxy and mined; anvil is SIGKILLed (losing all N) and
started again (`--sigterm`: stopped cleanly, so nothing is lost and reconciliation only checks
receipts). Reported: how long anvil took to answer again, how long until the proxy answered a read
(it holds reads until it has reconciled), the proxy's own reconciliation time, how many it re-sent, and
whether every token is back.

    .erx/venv/main/bin/python -m erx_bench.chain_reconcile 10 100 1000 3000 [--sigterm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

from erx_chain.accounts import dev_accounts
from erx_chain.node import anvil_process, prepare_state_file, proxy_process, wait_for_rpc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _measure(n: int, block_time: float, kill: signal.Signals = signal.SIGKILL) -> dict:
    from erx_contracts import ChainConfig, PrescriptionTokenClient, new_prescription_key

    with tempfile.TemporaryDirectory(prefix="erx-reconcile-") as tmp:
        d = Path(tmp)
        node_port, proxy_port = _free_port(), _free_port()
        state = d / "state.json"
        node = anvil_process(node_port, d / "anvil.log", block_time=block_time, state_file=state,
                             state_interval=3600, order="fifo")
        proxy = proxy_process(proxy_port, node_port, d / "journal.jsonl", d / "proxy.log")

        def start_node() -> subprocess.Popen:
            prepare_state_file(state)
            with node.log_file.open("ab") as log:
                return subprocess.Popen(node.argv, env=os.environ | node.env, stdout=log, stderr=subprocess.STDOUT)

        anvil = start_node()
        with proxy.log_file.open("ab") as log:
            proxy_proc = subprocess.Popen(proxy.argv, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{proxy_port}"
        try:
            await wait_for_rpc(url, 30)
            accounts = dev_accounts(1, 1)
            admin = await PrescriptionTokenClient.deploy(ChainConfig(rpc_url=url, tx_timeout=120), accounts.authority)
            await admin.add_issuer(accounts.doctors[0].address)
            anvil.send_signal(signal.SIGTERM)  # clean stop: what is on disk now survives the kill below
            anvil.wait()
            anvil = start_node()
            await wait_for_rpc(url, 30)
            doctor = admin.for_account(accounts.doctors[0])
            keys = [new_prescription_key() for _ in range(n)]
            now = await doctor.chain_time()
            gate = asyncio.Semaphore(200)

            async def create(key) -> None:
                async with gate:
                    await doctor.create(key.address, redemptions=1, not_before=now - 60, not_after=now + 86400)

            await asyncio.gather(*(create(k) for k in keys))
            os.kill(anvil.pid, kill)
            anvil.wait()
            started = time.monotonic()
            anvil = start_node()
            await wait_for_rpc(node.rpc_url, 60)
            node_up = time.monotonic() - started
            await wait_for_rpc(url, 120)
            answered = time.monotonic() - started
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{url}/health") as resp:
                    report = (await resp.json())["reconciliations"][-1]
            statuses = await asyncio.gather(*(doctor.status(k.address) for k in keys))
            await admin.close()
            return {"journaled_missing": report["missing"], "resent": report["resent"],
                    "node_answers_s": round(node_up, 2), "proxy_answers_s": round(answered, 2),
                    "reconcile_s": report["seconds"], "all_tokens_back": all(s.exists for s in statuses),
                    "state_file_kib": state.stat().st_size // 1024}
        finally:
            for proc in (proxy_proc, anvil):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("txs", nargs="*", type=int, default=[10, 100, 1000])
    parser.add_argument("--block-time", type=float, default=1.0)
    parser.add_argument("--sigterm", action="store_true",
                        help="stop anvil cleanly instead (it dumps its state: nothing is missing, only checked)")
    args = parser.parse_args()
    kill = signal.SIGTERM if args.sigterm else signal.SIGKILL
    for n in args.txs:
        print(json.dumps({"txs": n, "signal": kill.name, **asyncio.run(_measure(n, args.block_time, kill))}),
              flush=True)


if __name__ == "__main__":
    main()
