"""`erx bench agents`: prescriptions issued and presentations verified per second, through the
doctor's and a pharmacy's controllers and agents (revocation enabled), with concurrency.

Issued = the doctor's controller creates the token on chain, offers the credential, the patient's
wallet accepts and stores it. Verified = the pharmacy asks (connectionless), the wallet builds the
proof, the pharmacy verifies it and checks the token. Both run on this machine, so the holder's
proof creation shares the CPU with the verifier. The ceiling is the same AnonCreds library signing
and verifying in-process with 2 threads, measured in the same run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncio
import time

from erx_bench.stats import latency_summary, machine, table
from erx_roles.scenario import Scenario, sample_order



if TYPE_CHECKING:  # the launcher's system is handed in; the bench never builds one
    from erx_cli.system import LocalSystem as Network

async def _rate(n: int, concurrency: int, action) -> tuple[float, list[float], list]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(i: int):
        async with gate:
            t0 = time.monotonic()
            result = await action(i)
            latencies.append(time.monotonic() - t0)
            return result

    started = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.monotonic() - started), latencies, results


async def run_agents(network: Network, quick: bool = False, concurrency: int | None = None, progress=print) -> dict:
    from erx_bench.anoncreds_ceiling import measure_ceiling

    n = 4 if quick else 60
    # 20 at once (and sometimes 8) exhausts the agent's sqlite wallet sessions: askar session open times
    # out after 10 s and ACA-Py answers 500. 4 keeps both agents busy (CPU-bound) without failures.
    concurrency = concurrency or (2 if quick else 4)
    roles: dict[str, str] = {}
    for a in network.settings.agents:  # the first agent of each role, as the demo does
        roles.setdefault(a.role, a.name)
    doctor, pharmacy, patient = roles["doctor"], roles["pharmacy"], roles["patient"]
    s = Scenario(network)
    try:
        await s.onboard(doctor, [pharmacy])
        connection_id, _ = await s.connect(doctor, patient)
        progress(f"agents bench: issuing {n} prescriptions, {concurrency} at a time")
        issued_per_s, issue_lat, issued = await _rate(
            n, concurrency, lambda i: s.issue(doctor, connection_id, sample_order()))
        failed_issues = sum(p["state"] != "issued" for p in issued)
        credential = await s.credential_for(patient, issued[0]["prescription_id"])
        progress(f"agents bench: verifying {n} presentations, {concurrency} at a time")
        verified_per_s, verify_lat, checks = await _rate(
            n, concurrency, lambda i: s.present(pharmacy, patient, credential))
        failed_checks = sum(c["state"] != "verified" for c in checks)
    finally:
        await s.close()
    progress("agents bench: in-process AnonCreds ceiling")
    ceiling = await asyncio.to_thread(measure_ceiling, samples=5 if quick else 30)
    phases = [
        {"phase": "issue (offer → stored)", "n": n, "concurrency": concurrency, "per_s": round(issued_per_s, 2),
         "failed": failed_issues, **latency_summary(issue_lat)},
        {"phase": "verify (request → checked)", "n": n, "concurrency": concurrency,
         "per_s": round(verified_per_s, 2), "failed": failed_checks, **latency_summary(verify_lat)},
    ]
    summary = {
        "issued_per_s": round(issued_per_s, 2),
        "verified_per_s": round(verified_per_s, 2),
        "ceiling_sign_per_s": ceiling["ceiling_sign_per_s"],
        "ceiling_verify_per_s": ceiling["ceiling_verify_per_s"],
        "issue_ratio_to_ceiling": round(issued_per_s / ceiling["ceiling_sign_per_s"], 3),
        "verify_ratio_to_ceiling": round(verified_per_s / ceiling["ceiling_verify_per_s"], 3),
        "failed": failed_issues + failed_checks,
    }
    return {"bench": "agents", "quick": quick, "machine": machine(), "summary": summary, "phases": phases,
            "ceiling": ceiling}


def render(report: dict) -> str:
    s = report["summary"]
    return (table(report["phases"], ["phase", "n", "concurrency", "per_s", "failed", "p50_latency_s",
                                     "p95_latency_s", "p99_latency_s"]) + "\n\n"
            f"issued {s['issued_per_s']}/s ({s['issue_ratio_to_ceiling']} of in-process signing "
            f"{s['ceiling_sign_per_s']}/s); verified {s['verified_per_s']}/s ({s['verify_ratio_to_ceiling']} of "
            f"in-process verification {s['ceiling_verify_per_s']}/s)")
