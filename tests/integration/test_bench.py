"""Each benchmark runs on a tiny load and emits the JSON its consumers read. Not a performance test:
figures are printed by `./erx bench`, never asserted."""

from __future__ import annotations

import json

import pytest

from erx_bench.agents import render as render_agents
from erx_bench.agents import run_agents
from erx_bench.flow import run_flow_bench
from erx_bench.ledger import run_ledger
from erx_cli.system import LocalSystem as Network

pytestmark = pytest.mark.integration


def assert_report(report: dict, keys: set[str]) -> dict:
    doc = json.loads(json.dumps(report))  # JSON-serialisable as a whole
    assert keys <= set(doc["summary"]), keys - set(doc["summary"])
    for key in keys:
        assert isinstance(doc["summary"][key], (int, float)) and doc["summary"][key] > 0, (key, doc["summary"])
    return doc


async def test_ledger_bench_quick():
    doc = assert_report(await run_ledger(quick=True, progress=lambda m: None),
                        {"token_ops_per_s", "create_tx_per_s", "spend_tx_per_s", "p50_latency_s", "p95_latency_s",
                         "ceiling_tx_per_s"})
    assert doc["summary"]["rejected_tx"] == 0
    assert all(p["mined_tx"] == p["sent_tx"] for p in doc["phases"])


async def test_agents_bench_quick(network: Network):
    doc = assert_report(await run_agents(network, quick=True, progress=lambda m: None),
                        {"issued_per_s", "verified_per_s", "ceiling_sign_per_s", "ceiling_verify_per_s",
                         "machine_crypto_issue_per_s", "machine_crypto_verify_per_s"})
    assert doc["summary"]["failed"] == 0
    assert [(r["phase"], r["concurrency"]) for r in doc["levels"]] == [
        ("issue", 1), ("verify", 1), ("issue", 2), ("verify", 2)]
    assert all(r["cpu"] for r in doc["levels"]), "CPU per process is measured for every phase"
    assert all(r["cpu_ms_per_op_total"] > 0 and 0 < r["crypto_share"] < 1 for r in doc["levels"]), doc["levels"]
    assert "agents bench" not in render_agents(doc) and "concurrency" in render_agents(doc)


async def test_flow_bench_quick(network: Network):
    assert_report(await run_flow_bench(network, quick=True, progress=lambda m: None), {"p50_s", "p95_s"})
