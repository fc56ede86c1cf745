"""`erx bench flow`: the whole doctor → patient → pharmacy flow, one prescription after another,
wall time per step (machine time only: the wallet answers at once)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import time

from erx_bench.stats import machine, percentile, table
from erx_roles.scenario import Scenario, sample_order


if TYPE_CHECKING:  # the launcher's system is handed in; the bench never builds one
    from erx_cli.system import LocalSystem as Network

STEPS = ["issue", "present", "dispense"]


async def run_flow_bench(network: Network, quick: bool = False, progress=print) -> dict:
    rounds = 2 if quick else 20
    roles: dict[str, str] = {}
    for a in network.settings.agents:  # the first agent of each role, as the demo does
        roles.setdefault(a.role, a.name)
    doctor, pharmacy, patient = roles["doctor"], roles["pharmacy"], roles["patient"]
    s = Scenario(network)
    times: dict[str, list[float]] = {k: [] for k in STEPS + ["total"]}
    try:
        await s.onboard(doctor, [pharmacy])
        connection_id, _ = await s.connect(doctor, patient)
        progress(f"flow bench: {rounds} prescriptions, issue → present → dispense")
        for _ in range(rounds):
            t0 = time.monotonic()
            prescription = await s.issue(doctor, connection_id, sample_order())
            credential = await s.credential_for(patient, prescription["prescription_id"])
            t1 = time.monotonic()
            check = await s.present(pharmacy, patient, credential)
            t2 = time.monotonic()
            done = await s.client(pharmacy).post(f"/api/checks/{check['check_id']}/dispense")
            t3 = time.monotonic()
            assert done["state"] == "dispensed", done
            for k, v in zip(STEPS + ["total"], [t1 - t0, t2 - t1, t3 - t2, t3 - t0]):
                times[k].append(v)
    finally:
        await s.close()
    phases = [{"step": k, "n": len(v), "p50_s": round(percentile(v, 50), 3), "p95_s": round(percentile(v, 95), 3)}
              for k, v in times.items()]
    total = phases[-1]
    # two of the steps end with a block (the token's creation, its spend): the chain's block time is a
    # figure of the run (ERX_CHAIN__BLOCK_TIME_S; Besu QBFT's blockperiodseconds in production)
    block_time_s = network.settings.chain.block_time_s
    return {"bench": "flow", "quick": quick, "machine": machine(),
            "summary": {"p50_s": total["p50_s"], "p95_s": total["p95_s"], "block_time_s": block_time_s},
            "phases": phases}


def render(report: dict) -> str:
    s = report["summary"]
    return (table(report["phases"], ["step", "n", "p50_s", "p95_s"])
            + f"\n\nwhole flow p50 {s['p50_s']} s, p95 {s['p95_s']} s; blocks every {s.get('block_time_s')} s")
