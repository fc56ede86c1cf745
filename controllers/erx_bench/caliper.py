"""`run_caliper`: Hyperledger Caliper 0.6.0's report for the ledger workload (PrescriptionToken create + spend).

The same node set-up as `erx_bench.ledger` (a fresh anvil with 1 s blocks, gas price 0, a 10G block gas
limit), but measured by Caliper with its ethereum connector (web3 1.3 over WebSocket), the tool and
metric definitions of the published Besu measurement (228 TPS, 1.72 s average latency):

  1. `create` at a fixed offered rate: `create(token, 1, notBefore, notAfter)` by an onboarded issuer;
  2. `spend` at the same rate: `spend(token, 1, signature)` by an onboarded dispenser, on tokens created
     beforehand here (createBatch) whose one-time keys signed the EIP-712 Spend(token, dispenser, 1)
     authorisation for the Caliper worker's account (Caliper sends everything from one account per
     worker, so the signatures are made off-line and handed to the JS workload as a JSON file).

Caliper itself lives under .erx/caliper (npm ci from quorum-network/caliper's package.json and lock,
which pin caliper-cli 0.6.0 and web3 1.3.0, i.e. what `caliper bind --caliper-bind-sut ethereum:1.3`
would install). The contract is deployed here and Caliper's install phase is skipped; the network
configuration carries its address and ABI.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import html
import json
import os
import re
import shutil
import signal
import string
import subprocess
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from coincurve import PrivateKey
from eth_account import Account
from eth_account.hdaccount.deterministic import HDPath
from eth_utils import keccak, to_checksum_address

from erx_bench.ledger import FastSpendSigner
from erx_chain.accounts import dev_accounts
from erx_chain.node import anvil_process, wait_for_rpc
from erx_contracts.artifact import load_artifact
from erx_contracts.client import PrescriptionTokenClient, TokenSpec, sign_spend
from erx_contracts.config import ChainConfig
from erx_core.processes import ProcessSpec, Supervisor, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = REPO_ROOT / "quorum-network" / "caliper"  # package.json + lock, templates, workload modules
INSTALL_DIR = REPO_ROOT / ".erx" / "caliper"  # node_modules (git-ignored)
BENCH_DIR = REPO_ROOT / ".erx" / "bench"
REPORT_COPY = BENCH_DIR / "caliper-report.html"
LOG_COPY = BENCH_DIR / "caliper.log"

CHAIN_ID = 1337
GAS_LIMIT = 10_000_000_000
CONTRACT_NAME = "PrescriptionToken"
# The ethereum connector derives worker i's account as m/44'/60'/i'/0/0 from this seed; ethereumjs-wallet
# feeds the string's UTF-8 bytes to BIP-32 as the master seed (checked against it: same addresses).
# A fixed, public development seed: never fund these accounts or give them roles on a shared network.
WORKER_SEED = "0x6572782d63616c697065722d62656e63682d776f726b65722d7365656421"
BATCH = 250  # tokens per createBatch when preparing the spend round


def worker_accounts(n: int, seed: str = WORKER_SEED) -> list[Any]:
    """The accounts Caliper's workers 0..n-1 send from (fromAddressSeed)."""
    return [Account.from_key(HDPath(f"m/44'/60'/{i}'/0/0").derive(seed.encode())) for i in range(n)]


# -- installation ---------------------------------------------------------------------------------------
def _install_fingerprint() -> str:
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((SOURCE_DIR / name).read_bytes())
    return f"{digest.hexdigest()} node {node}"


def ensure_caliper(progress=print) -> Path:
    """npm ci of the pinned Caliper into INSTALL_DIR unless the marker says this lock is installed.

    Returns the caliper-cli entry point. Idempotent, and serialised by a lock file between processes.
    """
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    cli = INSTALL_DIR / "node_modules" / "@hyperledger" / "caliper-cli" / "caliper.js"
    marker = INSTALL_DIR / ".installed"
    want = _install_fingerprint()
    with open(INSTALL_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cli.is_file() and marker.is_file() and marker.read_text().strip() == want:
            progress(f"caliper: 0.6.0 already installed in {INSTALL_DIR}")
            return cli
        progress(f"caliper: installing @hyperledger/caliper-cli 0.6.0 + web3 1.3.0 into {INSTALL_DIR} "
                 "(npm ci, ~1-2 min)")
        marker.unlink(missing_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(SOURCE_DIR / name, INSTALL_DIR / name)
        t0 = time.monotonic()
        log = INSTALL_DIR / "npm-ci.log"
        with open(log, "w") as out:
            rc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=INSTALL_DIR, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        if rc != 0 or not cli.is_file():
            raise RuntimeError(f"npm ci in {INSTALL_DIR} failed (exit {rc}); see {log}")
        marker.write_text(want + "\n")
        progress(f"caliper: installed in {time.monotonic() - t0:.0f} s")
        return cli


# -- the run ------------------------------------------------------------------------------------------
async def run_caliper(quick: bool = False, progress=print, *, tps: int | None = None, tx_number: int | None = None,
                      workers: int = 2) -> dict:
    """Caliper's report for create and spend rounds at a fixed offered rate on a fresh 1 s-block anvil.

    quick: 50 TPS, 250 transactions per round (~5 s); otherwise 200 TPS, 6,000 per round (~30 s).
    workers: Caliper worker processes (local, forked by the manager), each with its own account.
    """
    tps = tps or (50 if quick else 200)
    tx_number = tx_number or (250 if quick else 6000)
    t_install = time.monotonic()
    cli = await asyncio.to_thread(ensure_caliper, progress)
    install_s = round(time.monotonic() - t_install, 1)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)

    with TemporaryDirectory(prefix="erx-bench-caliper-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        node = anvil_process(port, tmp / "anvil.log", name="caliper-anvil", chain_id=CHAIN_ID, block_time=1,
                             gas_limit=GAS_LIMIT, state_file=None, state_interval=None)
        supervisor = Supervisor(tmp / "run")
        supervisor.start(ProcessSpec(name=node.name, argv=node.argv, env=node.env, log_file=node.log_file,
                                     ports=[port]))
        try:
            await wait_for_rpc(node.rpc_url, timeout=20)
            progress(f"caliper: anvil on 127.0.0.1:{port} (1 s blocks, chain {CHAIN_ID})")
            setup = await _prepare(node.rpc_url, tmp, workers, tx_number, progress)
            net_cfg, bench_cfg = _write_configs(tmp, port, setup, workers, tps, tx_number)
            load_before = os.getloadavg()[0]
            log_lines = await _launch_manager(cli, tmp, net_cfg, bench_cfg, timeout_s=120 + 3 * tx_number / tps,
                                              progress=progress)
            load_after = os.getloadavg()[0]
        finally:
            supervisor.stop(node.name)

        report = tmp / "report.html"
        rounds = _parse_report_html(report.read_text()) if report.is_file() else []
        if not rounds:
            rounds = _parse_console(log_lines)
        if report.is_file():
            shutil.copyfile(report, REPORT_COPY)
        LOG_COPY.write_text("\n".join(log_lines) + "\n")

    if not rounds:
        raise RuntimeError(f"Caliper produced no results; see {LOG_COPY}")
    return {
        "bench": "caliper",
        "caliper": "0.6.0 (ethereum connector, web3 1.3.0 over ws)",
        "node": "anvil, 1 s blocks, gas price 0, block gas limit 10G",
        "quick": quick,
        "offered_tps": tps,
        "tx_per_round": tx_number,
        "workers": workers,
        "install_s": install_s,
        # Everything (node, Caliper manager and workers) shares this machine's CPUs with whatever else runs.
        "machine": {"cpus": os.cpu_count(), "load_1m_before": round(load_before, 2),
                    "load_1m_after": round(load_after, 2)},
        "rounds": rounds,
        "report_html": str(REPORT_COPY) if REPORT_COPY.is_file() else None,
        "log": str(LOG_COPY),
    }


async def _prepare(rpc_url: str, tmp: Path, workers: int, tx_number: int, progress) -> dict[str, Any]:
    """Deploys, onboards the worker accounts as issuer and dispenser, creates the spend round's tokens
    and writes their pre-signed authorisations, one list per worker account."""
    config = ChainConfig(rpc_url=rpc_url, chain_id=CHAIN_ID, tx_timeout=60.0)
    authority = dev_accounts(0, 0).authority
    preparer = dev_accounts(1, 0).doctors[0]  # issuer of the spend round's tokens
    senders = [a.address for a in worker_accounts(workers)]
    admin = await PrescriptionTokenClient.deploy(config, authority)
    try:
        contract = admin.contract_address
        await asyncio.gather(admin.add_issuer(preparer.address),
                             *(admin.add_issuer(s) for s in senders), *(admin.add_dispenser(s) for s in senders))
        now = await admin.chain_time()
        window = (now - 3600, now + 30 * 86400)
        progress(f"caliper: PrescriptionToken at {contract}; worker account(s) {', '.join(senders)} "
                 "onboarded as issuer and dispenser")

        # Caliper splits txNumber over the workers: each gets its share plus a little spare.
        per_worker = -(-tx_number // workers) + 10
        t0 = time.monotonic()
        keys = [os.urandom(32) for _ in range(per_worker * workers)]
        tokens = [_address(k) for k in keys]
        signer = FastSpendSigner(contract)
        assert signer.sign(keys[0], tokens[0], senders[0], 1) == sign_spend(
            "0x" + keys[0].hex(), chain_id=CHAIN_ID, contract_address=contract, dispenser=senders[0],
            remaining=1), "fast signer disagrees with erx_contracts.sign_spend"
        spends: dict[str, list[list[str]]] = {}
        for w, sender in enumerate(senders):
            part = range(w * per_worker, (w + 1) * per_worker)
            spends[sender.lower()] = [[tokens[i], "0x" + signer.sign(keys[i], tokens[i], sender, 1).hex()]
                                      for i in part]
        spends_file = tmp / "spends.json"
        spends_file.write_text(json.dumps(spends))
        sign_s = time.monotonic() - t0

        t0 = time.monotonic()
        issuer = admin.for_account(preparer)
        specs = [TokenSpec(token=t, redemptions=1, not_before=window[0], not_after=window[1]) for t in tokens]
        await asyncio.gather(*(issuer.create_batch(specs[i:i + BATCH]) for i in range(0, len(specs), BATCH)))
        progress(f"caliper: {len(tokens)} tokens for the spend round signed in {sign_s:.1f} s, created "
                 f"(createBatch x{BATCH}) in {time.monotonic() - t0:.1f} s")
    finally:
        await admin.close()
    return {"contract": contract, "window": window, "spends_file": spends_file}


def _address(private_key: bytes) -> str:
    public = PrivateKey(private_key).public_key.format(compressed=False)[1:]
    return to_checksum_address(keccak(public)[-20:])


def _write_configs(tmp: Path, port: int, setup: dict[str, Any], workers: int, tps: int,
                   tx_number: int) -> tuple[Path, Path]:
    net = json.loads((SOURCE_DIR / "networkconfig.template.json").read_text())
    eth = net["ethereum"]
    eth["url"] = f"ws://127.0.0.1:{port}"  # anvil serves WebSocket on its HTTP port
    eth["fromAddressSeed"] = WORKER_SEED
    eth["chainId"] = CHAIN_ID
    eth["gasPrice"] = 0
    entry = eth["contracts"][CONTRACT_NAME]
    entry["address"] = setup["contract"]
    entry["abi"] = load_artifact().abi
    net_cfg = tmp / "networkconfig.json"  # JSON: the connector require()s it
    net_cfg.write_text(json.dumps(net, indent=1))

    bench = string.Template((SOURCE_DIR / "benchconfig.template.yaml").read_text()).substitute(
        workers=workers, tps=tps, tx_number=tx_number, workload_dir=SOURCE_DIR / "workload",
        not_before=setup["window"][0], not_after=setup["window"][1], spends_file=setup["spends_file"], port=port,
        workspace=tmp)
    bench_cfg = tmp / "benchconfig.yaml"
    bench_cfg.write_text(bench)
    return net_cfg, bench_cfg


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FORWARD = re.compile(r"Started round|Finished round|Round \d+ - |Error|error:", re.I)


async def _launch_manager(cli: Path, tmp: Path, net_cfg: Path, bench_cfg: Path, timeout_s: float,
                          progress) -> list[str]:
    """Runs `caliper launch manager` in its own process group; returns its console output.

    Its workers are forked children in the same group: any still alive when the manager has finished
    (it happens) are stopped by pid afterwards.
    """
    argv = ["node", str(cli), "launch", "manager",
            "--caliper-workspace", str(tmp),
            "--caliper-networkconfig", str(net_cfg),
            "--caliper-benchconfig", str(bench_cfg),
            "--caliper-report-path", str(tmp / "report.html"),
            "--caliper-flow-skip-install"]
    # Workload modules live in the source tree and require('@hyperledger/caliper-core') from the install.
    env = {**os.environ, "NODE_PATH": str(INSTALL_DIR / "node_modules"), "NO_COLOR": "1"}
    progress(f"caliper: launch manager ({bench_cfg.name}, {net_cfg.name} in {tmp})")
    proc = await asyncio.create_subprocess_exec(*argv, cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                start_new_session=True, limit=2**22)
    lines: list[str] = []
    forwarded_errors = 0

    async def pump() -> None:
        nonlocal forwarded_errors
        assert proc.stdout is not None
        while raw := await proc.stdout.readline():
            line = _ANSI.sub("", raw.decode(errors="replace").rstrip())
            lines.append(line)
            if _FORWARD.search(line):
                if re.search(r"error", line, re.I):
                    forwarded_errors += 1
                    if forwarded_errors > 5:
                        continue
                progress("caliper| " + line.split("] ", 2)[-1].strip())

    pump_task = asyncio.create_task(pump())
    try:
        # Not proc.wait(): asyncio returns from it only once the pipe is closed too, which a leftover
        # worker prevents; the return code is set as soon as the manager itself has exited.
        deadline = time.monotonic() + timeout_s
        while proc.returncode is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if proc.returncode is None:
            progress(f"caliper: manager still running after {timeout_s:.0f} s, stopping it")
        # A worker that outlives the manager keeps the output pipe (and its WebSocket) open.
        try:
            await asyncio.wait_for(asyncio.shield(pump_task), 5)
        except TimeoutError:
            pass
    finally:
        await asyncio.to_thread(_stop_group, proc.pid, progress)
        if proc.returncode is None:
            await proc.wait()
        try:
            await asyncio.wait_for(pump_task, 10)
        except TimeoutError:
            pass
    if proc.returncode not in (0, None):
        progress(f"caliper: manager exited with {proc.returncode}")
    return lines


def _group_members(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _stop_group(pgid: int, progress) -> None:
    """SIGTERM, then SIGKILL, every live process of the group the manager leads (manager + workers)."""
    left = _group_members(pgid)
    if not left:
        return
    progress(f"caliper: stopping leftover process(es) {left} of the manager's group")
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while (left := _group_members(pgid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not left:
            break
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass


# -- Caliper's report ---------------------------------------------------------------------------------
_COLUMNS = {"Name": "name", "Succ": "succ", "Fail": "fail", "Send Rate (TPS)": "send_rate_tps",
            "Max Latency (s)": "max_latency_s", "Min Latency (s)": "min_latency_s",
            "Avg Latency (s)": "avg_latency_s", "Throughput (TPS)": "throughput_tps"}


def _round_row(head: list[str], cells: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for title, value in zip(head, cells):
        key = _COLUMNS.get(title.strip())
        if key is None:
            continue
        value = value.strip()
        if key == "name":
            row[key] = value
        elif key in ("succ", "fail"):
            row[key] = int(value)
        else:
            try:
                row[key] = float(value)
            except ValueError:
                row[key] = None  # '-' when nothing succeeded
    return row


def _parse_report_html(text: str) -> list[dict[str, Any]]:
    """The 'Summary of performance metrics' table of report.html."""
    start = text.find('id="benchmarksummary"')
    if start < 0:
        return []
    end = text.find("</table>", start)
    section = text[start:end]
    head = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", section, re.S)]
    rows = []
    for tr in re.findall(r"<tr>(.*?)</tr>", section, re.S):
        cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", tr, re.S)]
        if cells:
            rows.append(_round_row(head, cells))
    return rows


def _parse_console(lines: list[str]) -> list[dict[str, Any]]:
    """Fallback: the '### All test results ###' table of the console output."""
    try:
        start = max(i for i, line in enumerate(lines) if "All test results" in line)
    except ValueError:
        return []
    table = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[start + 1:]
             if line.strip().startswith("|")]
    if not table:
        return []
    return [_round_row(table[0], row) for row in table[1:]]
