"""A real 4-validator indy-node pool (native processes) and the typed IndyLedger port to it.

No mocks: validators are indy-node 1.13.2 processes on 127.0.0.1, the client is indy-vdr.
Run with `-s` to see the measured figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from erx_indy.ledger import IndyLedger, LedgerRequestRejected, NymRecord, Role, did_from_seed
from erx_indy.pool import DEV_TRUSTEE_SEED

if TYPE_CHECKING:
    from tests.integration.conftest_indy import LocalIndyPool

REPO_ROOT = Path(__file__).resolve().parents[2]

pytest_plugins = ["tests.integration.conftest_indy"]
pytestmark = pytest.mark.integration

# Reads one NYM in a child process with indy-vdr's consensus logging on, so the test can see
# indy-vdr's own verdict on the reply's state proof.
_CHILD_READ = """
import asyncio, sys
from pathlib import Path
from erx_indy.ledger import IndyLedger

async def main():
    async with await IndyLedger.open(Path(sys.argv[1])) as ledger:
        record = await ledger.get_nym(sys.argv[2])
        print(record.model_dump_json() if record else "null")

asyncio.run(main())
"""


def new_seed() -> str:
    return os.urandom(16).hex()  # 32 characters, as ACA-Py seeds are


async def read_committed(ledger: IndyLedger, did: str, timeout: float = 10.0) -> NymRecord:
    """The NYM once the validator that answers has committed it (reads may lag a write)."""
    deadline = time.monotonic() + timeout
    while (record := await ledger.get_nym(did)) is None:
        assert time.monotonic() < deadline, f"{did} not readable {timeout:.0f} s after its write"
        await asyncio.sleep(0.2)
    return record


def read_with_vdr_log(genesis: Path, did: str) -> tuple[dict | None, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT / "indy-network"),
        "RUST_LOG": "indy_vdr::pool::handlers::consensus=debug",
    }
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD_READ, str(genesis), did],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(proc.stdout), proc.stderr


async def test_fresh_pool_writes_and_proves_reads(indy_pool: LocalIndyPool) -> None:
    print(f"\nfresh pool: 4/4 participating {indy_pool.fresh_start_s:.1f} s after start")
    print("RSS per node (MB):", {k: round(v) for k, v in indy_pool.rss_mb().items()})

    async with await IndyLedger.open(indy_pool.genesis) as ledger:
        status = await ledger.nodes_status(DEV_TRUSTEE_SEED)
        assert (status.participating, status.total) == (4, 4)
        assert all(n.reachable_nodes == 4 for n in status.nodes)

        # The trustee writes a NYM; the read comes back with a multi-signed state proof.
        did, verkey = did_from_seed(new_seed())
        latencies = []
        for _ in range(5):
            other_did, other_verkey = did_from_seed(new_seed())
            t0 = time.perf_counter()
            await ledger.write_nym(DEV_TRUSTEE_SEED, other_did, other_verkey)
            latencies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        written = await ledger.write_nym(DEV_TRUSTEE_SEED, did, verkey, Role.ENDORSER, alias="test-org")
        latencies.append(time.perf_counter() - t0)
        print("NYM write latency (s):", [round(x, 3) for x in sorted(latencies)])

        record = await read_committed(ledger, did)
        assert (record.did, record.verkey, record.role, record.seq_no) == (did, verkey, Role.ENDORSER, written.seq_no)
        assert record.proof is not None and len(record.proof.participants) >= 3
        reads = []
        for _ in range(5):
            t0 = time.perf_counter()
            await ledger.get_nym(did)
            reads.append(time.perf_counter() - t0)
        print("GET_NYM (state-proven) latency (s):", [round(x, 3) for x in sorted(reads)])

        # indy-vdr accepts one reply alone only if its state proof verifies, and logs that; a
        # failed check would be logged too before it falls back to f+1 matching replies.
        child_record, vdr_log = read_with_vdr_log(indy_pool.genesis, did)
        assert child_record is not None and child_record["verkey"] == verkey
        assert "State proof verification succeeded" in vdr_log
        assert "State proof verification failed" not in vdr_log

        # A DID without a role may not create an ENDORSER: the auth rule refuses it.
        plain_seed = new_seed()
        plain_did, plain_verkey = did_from_seed(plain_seed)
        await ledger.write_nym(DEV_TRUSTEE_SEED, plain_did, plain_verkey)
        await read_committed(ledger, plain_did)
        target_did, target_verkey = did_from_seed(new_seed())
        with pytest.raises(LedgerRequestRejected) as refused:
            await ledger.write_nym(plain_seed, target_did, target_verkey, Role.ENDORSER)
        assert refused.value.op == "REJECT"
        assert "UnauthorizedClientRequest" in refused.value.reason
        assert await ledger.get_nym(target_did) is None  # absence is state-proven as well


async def test_restart_resumes_on_the_same_ledger(indy_pool: LocalIndyPool) -> None:
    async with await IndyLedger.open(indy_pool.genesis) as ledger:
        did, verkey = did_from_seed(new_seed())
        written = await ledger.write_nym(DEV_TRUSTEE_SEED, did, verkey)
        await read_committed(ledger, did)

    codes = indy_pool.stop()
    assert codes == {f"Node{i}": 0 for i in range(1, 5)}, "nodes must exit cleanly on SIGTERM"

    started = time.monotonic()
    indy_pool.start()
    await indy_pool.wait_participating()
    print(f"\nrestart: 4/4 participating {time.monotonic() - started:.1f} s after start")

    async with await IndyLedger.open(indy_pool.genesis) as ledger:
        record = await read_committed(ledger, did)
        assert (record.verkey, record.seq_no) == (verkey, written.seq_no)
        # The restarted pool still orders writes.
        after_did, after_verkey = did_from_seed(new_seed())
        after = await ledger.write_nym(DEV_TRUSTEE_SEED, after_did, after_verkey)
        assert after.seq_no > written.seq_no
        assert (await read_committed(ledger, after_did)).verkey == after_verkey
