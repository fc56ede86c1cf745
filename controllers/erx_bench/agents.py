"""`erx bench agents`: prescriptions issued and presentations verified per second, through the
doctor's and a pharmacy's controllers and agents (revocation enabled), at concurrency 1, 4, 16 and 32
(`--prefill N` first fills the wallets with N prescriptions). Failed requests are counted per level.

Issued = the doctor's controller creates the token on chain, offers the credential, the patient's
wallet accepts and stores it. Verified = the pharmacy asks (connectionless), the wallet builds the
proof, the pharmacy verifies it and checks the token. Both run on this machine, so the holder's
proof creation shares the CPU with the verifier. The ceiling is the same AnonCreds library signing
and verifying in-process with 2 threads, measured in the same run.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from erx_bench.stats import latency_summary, machine, table
from erx_roles.scenario import Scenario, sample_order

if TYPE_CHECKING:  # the launcher's system is handed in; the bench never builds one
    from erx_cli.system import LocalSystem as Network


LEVELS = [1, 4, 16, 32]
QUICK_LEVELS = [1, 2]
PREFILL_CONCURRENCY = 32  # untimed; as many at once as the top level


class Failed:
    """A request that failed: counted and reported, never a crash of the bench."""

    def __init__(self, error: BaseException):
        self.error = f"{type(error).__name__}: {error}"[:300]


async def _rate(n: int, concurrency: int, action, tick=None) -> tuple[float, list[float], list]:
    """Run action(0..n-1), `concurrency` at a time: (per second, latencies of the ones that succeeded,
    results with failures as `Failed`). `tick(done, n, elapsed_s)` is told of each finished request."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    done = 0

    async def one(i: int):
        nonlocal done
        async with gate:
            t0 = time.monotonic()
            try:
                result = await action(i)
            except Exception as exc:  # a refused or timed-out request is a figure, not the end of the run
                result = Failed(exc)
            else:
                latencies.append(time.monotonic() - t0)
            done += 1
            if tick is not None:
                tick(done, n, time.monotonic() - started)
            return result

    started = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.monotonic() - started), latencies, results


def _every(step: int, progress, what: str):
    """A `tick` for long untimed work: a progress line every `step` requests, with the rate so far."""
    def tick(done: int, n: int, elapsed_s: float) -> None:
        if done % step == 0 or done == n:
            progress(f"agents bench: {what} {done}/{n} ({done / max(elapsed_s, 1e-9):.1f}/s)")
    return tick


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants."""
    ticks, pending = 0, [pid]
    while pending:
        p = pending.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            ticks += int(fields[11]) + int(fields[12])
            pending += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each of the system's processes used during a phase (the holder's too: it shares
    this machine with the issuer and the verifier)."""

    def __init__(self, network: Network):
        self.network = network

    def sample(self) -> dict[str, float]:
        return {r.name: _cpu_seconds(r.pid) for r in self.network.supervisor.running()}

    @staticmethod
    def used(before: dict[str, float], after: dict[str, float], wall_s: float, top: int = 6) -> dict[str, float]:
        """CPU use per process as a share of one core over the phase, the busiest first."""
        shares = {name: (after[name] - before.get(name, 0.0)) / wall_s for name in after}
        return {name: round(share, 2) for name, share in sorted(shares.items(), key=lambda kv: -kv[1])[:top]
                if share >= 0.01}

    @staticmethod
    def per_operation(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
        """CPU milliseconds each process spent per operation of the phase (every process, busiest first):
        what one issuance or verification costs the machine, wherever it runs."""
        ms = {name: (after[name] - before.get(name, 0.0)) * 1000 / n for name in after}
        return {name: round(v, 1) for name, v in sorted(ms.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def _costs(cpu_ms: dict[str, float], crypto_ms: float) -> dict:
    """A phase's CPU cost per operation, summed over the machine, and the rate the machine could reach
    if nothing else ran: cores / CPU per operation. `crypto_ms` is what the AnonCreds operations of the
    same operation cost in-process; the rest is everything else the processes do (the profile's
    question: how much is not cryptography)."""
    total = sum(cpu_ms.values())
    cpus = os.cpu_count() or 1
    return {"cpu_ms_per_op": cpu_ms, "cpu_ms_per_op_total": round(total, 1),
            "machine_bound_per_s": round(cpus * 1000 / total, 2) if total else None,
            "crypto_share": round(crypto_ms / total, 3) if total else None}


def _failures(results: list, ok) -> tuple[int, list[str]]:
    errors = [r.error if isinstance(r, Failed) else f"ended {r.get('state')}" for r in results
              if isinstance(r, Failed) or not ok(r)]
    return len(errors), sorted(set(errors))[:3]


async def run_agents(network: Network, quick: bool = False, concurrency: int | None = None, progress=print,
                     levels: list[int] | None = None, prefill: int = 0) -> dict:
    """Issue and verify at each concurrency level (the same n per level); `prefill` prescriptions are
    issued first, untimed, so the doctor's and the wallet's stores start that much larger."""
    from erx_bench.anoncreds_ceiling import measure_ceiling

    levels = levels or ([concurrency] if concurrency else (QUICK_LEVELS if quick else LEVELS))
    # First, on a machine the system does not load yet: the in-process ceiling of the same run.
    progress("agents bench: in-process AnonCreds ceiling")
    ceiling = await asyncio.to_thread(measure_ceiling, samples=5 if quick else 30)
    crypto_ms = {"issue": ceiling["sign_cpu_ms_median"] + ceiling["process_cpu_ms_median"],
                 "verify": ceiling["prove_cpu_ms_median"] + ceiling["verify_cpu_ms_median"]}
    roles: dict[str, str] = {}
    for a in network.settings.agents:  # the first agent of each role, as the demo does
        roles.setdefault(a.role, a.name)
    doctor, pharmacy, patient = roles["doctor"], roles["pharmacy"], roles["patient"]
    s = Scenario(network)
    meter = CpuMeter(network)
    rows: list[dict] = []
    try:
        await s.onboard(doctor, [pharmacy])
        connection_id, _ = await s.connect(doctor, patient)
        if prefill:
            progress(f"agents bench: pre-filling the wallets with {prefill} prescriptions (untimed)")
            _, _, filled = await _rate(prefill, PREFILL_CONCURRENCY,
                                       lambda i: s.issue(doctor, connection_id, sample_order()),
                                       tick=_every(max(prefill // 20, 1), progress, "pre-filled"))
            progress(f"agents bench: pre-filled, {_failures(filled, lambda p: p['state'] == 'issued')[0]} failed")
        for level in levels:
            n = 4 if quick else max(40, 2 * level)
            progress(f"agents bench: issuing {n} prescriptions, {level} at a time")
            cpu0, t0 = meter.sample(), time.monotonic()
            issued_per_s, issue_lat, issued = await _rate(
                n, level, lambda i: s.issue(doctor, connection_id, sample_order()))
            cpu1 = meter.sample()
            cpu_issue = CpuMeter.used(cpu0, cpu1, time.monotonic() - t0)
            failed, errors = _failures(issued, lambda p: p["state"] == "issued")
            rows.append({"phase": "issue", "concurrency": level, "n": n, "per_s": round(issued_per_s, 2),
                         "failed": failed, "errors": errors, "cpu": cpu_issue, **latency_summary(issue_lat),
                         **_costs(CpuMeter.per_operation(cpu0, cpu1, n), crypto_ms["issue"])})
            good = [p for p in issued if not isinstance(p, Failed) and p["state"] == "issued"]
            if not good:
                continue
            credential = await s.credential_for(patient, good[0]["prescription_id"])
            progress(f"agents bench: verifying {n} presentations, {level} at a time")
            cpu0, t0 = meter.sample(), time.monotonic()
            verified_per_s, verify_lat, checks = await _rate(n, level, lambda i: s.present(pharmacy, patient,
                                                                                           credential))
            cpu1 = meter.sample()
            cpu_verify = CpuMeter.used(cpu0, cpu1, time.monotonic() - t0)
            failed, errors = _failures(checks, lambda c: c["state"] == "verified")
            rows.append({"phase": "verify", "concurrency": level, "n": n, "per_s": round(verified_per_s, 2),
                         "failed": failed, "errors": errors, "cpu": cpu_verify, **latency_summary(verify_lat),
                         **_costs(CpuMeter.per_operation(cpu0, cpu1, n), crypto_ms["verify"])})
    finally:
        await s.close()
    best_issue = max((r for r in rows if r["phase"] == "issue"), key=lambda r: r["per_s"], default=None)
    best_verify = max((r for r in rows if r["phase"] == "verify"), key=lambda r: r["per_s"], default=None)
    issued_per_s = best_issue["per_s"] if best_issue else 0.0
    verified_per_s = best_verify["per_s"] if best_verify else 0.0
    summary = {
        "issued_per_s": issued_per_s,
        "verified_per_s": verified_per_s,
        "ceiling_sign_per_s": ceiling["ceiling_sign_per_s"],
        "ceiling_verify_per_s": ceiling["ceiling_verify_per_s"],
        "issue_ratio_to_ceiling": round(issued_per_s / ceiling["ceiling_sign_per_s"], 3),
        "verify_ratio_to_ceiling": round(verified_per_s / ceiling["ceiling_verify_per_s"], 3),
        "best_issue_concurrency": best_issue["concurrency"] if best_issue else None,
        "best_verify_concurrency": best_verify["concurrency"] if best_verify else None,
        # the cryptography of issuer and holder (issue), prover and verifier (verify) on this machine's
        # cores, all sharing them as in this bench: the bound a perfect agent would reach here
        "machine_crypto_issue_per_s": ceiling["machine_crypto_issue_per_s"],
        "machine_crypto_verify_per_s": ceiling["machine_crypto_verify_per_s"],
        "issue_ratio_to_machine_crypto": round(issued_per_s / ceiling["machine_crypto_issue_per_s"], 3),
        "verify_ratio_to_machine_crypto": round(verified_per_s / ceiling["machine_crypto_verify_per_s"], 3),
        "failed": sum(r["failed"] for r in rows),
        "prefill": prefill,
    }
    summary["storage"] = sorted({a.storage for a in network.settings.agents})
    return {"bench": "agents", "quick": quick, "machine": machine(), "summary": summary, "levels": rows,
            "phases": rows, "ceiling": ceiling,
            "note": "the patient's wallet (the holder, building every proof) shares this machine's CPU"}


def render(report: dict) -> str:
    s = report["summary"]
    rows = [{**r, "cpu": ", ".join(f"{k} {v}" for k, v in r["cpu"].items())} for r in report["levels"]]
    errors = [f"  {r['phase']} @{r['concurrency']}: {e}" for r in report["levels"] for e in r["errors"]]
    return (table(rows, ["phase", "concurrency", "n", "per_s", "failed", "p50_latency_s", "p95_latency_s",
                         "p99_latency_s", "cpu_ms_per_op_total", "machine_bound_per_s", "crypto_share", "cpu"])
            + "\n" + ("failures:\n" + "\n".join(errors) + "\n" if errors else "")
            + f"cpu: cores used per process during the phase (busiest first); {report['note']}\n"
            "cpu_ms_per_op_total: CPU of every process per operation; machine_bound_per_s: the cores divided by "
            "it; crypto_share: the part of it that is AnonCreds (in-process figures of the same run)\n"
            + (f"wallets pre-filled with {s['prefill']} prescriptions\n" if s.get("prefill") else "")
            + f"storage: {', '.join(s.get('storage', ['sqlite']))}\n\n"
            f"issued {s['issued_per_s']}/s ({s['issue_ratio_to_ceiling']} of in-process signing "
            f"{s['ceiling_sign_per_s']}/s); verified {s['verified_per_s']}/s ({s['verify_ratio_to_ceiling']} of "
            f"in-process verification {s['ceiling_verify_per_s']}/s); best levels: issue @{s['best_issue_concurrency']}, "
            f"verify @{s['best_verify_concurrency']}\n"
            f"the cryptography of both sides on these cores allows {s['machine_crypto_issue_per_s']} issued/s and "
            f"{s['machine_crypto_verify_per_s']} verified/s (reached: {s['issue_ratio_to_machine_crypto']}, "
            f"{s['verify_ratio_to_machine_crypto']})")
