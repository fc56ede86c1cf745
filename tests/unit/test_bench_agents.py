"""The agents bench's arithmetic: failures are counted, never raised; CPU per operation and the machine
bound come from the processes' CPU seconds; long untimed work reports progress."""

from __future__ import annotations

import asyncio
import os

from erx_bench.agents import CpuMeter, Failed, _costs, _every, _rate


def test_a_failed_request_is_counted_and_the_rest_still_run():
    async def action(i: int):
        if i % 3 == 0:
            raise RuntimeError(f"refused {i}")
        await asyncio.sleep(0)
        return {"state": "issued", "i": i}

    per_s, latencies, results = asyncio.run(_rate(9, 4, action))
    failed = [r for r in results if isinstance(r, Failed)]
    assert len(failed) == 3 and all("RuntimeError: refused" in f.error for f in failed)
    assert len(latencies) == 6, "latencies are of the requests that succeeded"
    assert [r["i"] for r in results if not isinstance(r, Failed)] == [1, 2, 4, 5, 7, 8]
    assert per_s > 0


def test_tick_is_told_of_every_finished_request_failed_or_not():
    seen: list[tuple[int, int]] = []

    async def action(i: int):
        if i == 2:
            raise ValueError("no")
        return i

    asyncio.run(_rate(5, 2, action, tick=lambda done, n, elapsed: seen.append((done, n))))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_progress_every_step_and_at_the_end():
    lines: list[str] = []
    tick = _every(4, lines.append, "pre-filled")
    for done in range(1, 11):
        tick(done, 10, 2.0)
    assert lines == ["agents bench: pre-filled 4/10 (2.0/s)", "agents bench: pre-filled 8/10 (4.0/s)",
                     "agents bench: pre-filled 10/10 (5.0/s)"]


def test_cpu_per_operation_counts_every_process_busiest_first():
    before = {"agent-doctor": 10.0, "agent-patient": 5.0, "anvil": 1.0, "idle": 2.0}
    after = {"agent-doctor": 12.0, "agent-patient": 6.0, "anvil": 1.2, "idle": 2.0, "new": 0.1}
    per_op = CpuMeter.per_operation(before, after, n=10)
    assert per_op == {"agent-doctor": 200.0, "agent-patient": 100.0, "anvil": 20.0, "new": 10.0}
    assert list(per_op) == ["agent-doctor", "agent-patient", "anvil", "new"]


def test_machine_bound_is_the_cores_over_the_cpu_per_operation():
    costs = _costs({"agent-doctor": 150.0, "agent-patient": 100.0}, crypto_ms=80.0)
    assert costs["cpu_ms_per_op_total"] == 250.0
    assert costs["machine_bound_per_s"] == round((os.cpu_count() or 1) * 1000 / 250.0, 2)
    assert costs["crypto_share"] == 0.32


def test_a_phase_that_used_no_cpu_has_no_bound_rather_than_a_division_by_zero():
    assert _costs({}, crypto_ms=80.0) == {"cpu_ms_per_op": {}, "cpu_ms_per_op_total": 0,
                                          "machine_bound_per_s": None, "crypto_share": None}
