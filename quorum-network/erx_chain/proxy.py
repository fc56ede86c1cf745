"""Journaling JSON-RPC proxy in front of the dev chain's anvil: the dev chain loses no accepted transaction.

anvil keeps its chain in memory and dumps it to disk every few seconds; a SIGKILL rolls it back to the
last dump, taking receipts with it that clients already took as final. Besu with QBFT has immediate
finality and never rolls back, so this proxy is a development component only.

Controllers talk to the proxy (on the chain port they are configured with); anvil listens on an
internal port behind it.

- Every `eth_sendRawTransaction` (also inside a JSON-RPC batch) is appended to the journal and
  fsync'ed *before* it is forwarded, by one sequencer, so the journal order is the order anvil
  accepted the transactions in, across all organisations. A transaction is acknowledged with its
  hash only once it is durable.
- When anvil (re)starts — a request or the watchdog finds it unreachable, or its `instanceId` changed,
  or its head went below the highest block seen — nothing is forwarded until the proxy has
  reconciled: every journaled transaction without a receipt is re-sent, in journal order (a create
  always before the spends and cancels of its token), and mined. Reads are held too: a read of the
  rolled-back state would answer e.g. "unknown token" for a token whose creation is being re-applied.
  Every read is forwarded in one batch together with `anvil_metadata`, so an answer from a restarted
  node is never passed on before reconciliation.
- Requests wait for reconciliation for at most `hold_timeout` seconds; then they are answered with
  HTTP 503 and a JSON-RPC error (code -32000), which clients treat as transient. A transaction
  refused this way was not journaled and will never be applied. Once anvil has been unreachable for
  longer than `hold_timeout`, requests are answered so at once, until it is back.
- Methods that sign or change state on the node's side (`eth_sendTransaction`, `eth_sign*`,
  `personal_*`, `anvil_*`, `hardhat_*`, `evm_*`, `miner_*`, `admin_*`) are refused: only signed raw
  transactions change the chain. `anvil_dumpState` (read-only) stays allowed: the tests that prove
  no personal data reaches the chain read the node's whole state with it.

Run: python -m erx_chain.proxy --port 8545 --upstream http://127.0.0.1:PORT --journal FILE
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from erx_chain.journal import Journal, JournalEntry, tx_hash_of

LOG = logging.getLogger("erx_chain.proxy")

SEND = "eth_sendRawTransaction"
REFUSED_PREFIXES = ("personal_", "anvil_", "hardhat_", "evm_", "miner_", "admin_")
ALLOWED = frozenset({"anvil_dumpState"})  # read-only; used by tests/support.chain_haystack
REFUSED_CODE = -32004  # EIP-1474 "method not supported"
TRANSIENT_CODE = -32000
_IDENTITY_ID = "erx-chain-proxy-identity"
_RECEIPT_CHUNK = 500
_ALREADY_KNOWN = ("already known", "already imported", "known transaction")


def refusal(method: Any) -> str | None:
    """Why `method` is refused, or None if it may be forwarded."""
    if not isinstance(method, str):
        return "method must be a string"
    if method in ALLOWED:
        return None
    if method == SEND:
        return None
    if method.startswith("eth_sign") or method.startswith("eth_send"):
        return (f"{method} is refused by the erx chain proxy: the node signs nothing; sign locally and use "
                f"eth_sendRawTransaction")
    if method.startswith(REFUSED_PREFIXES):
        return f"{method} is refused by the erx chain proxy: node-side cheat and account methods are disabled"
    return None


def _error(req_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}}


def _already_known(error: Any) -> bool:
    message = str(error.get("message", "") if isinstance(error, dict) else error).lower()
    return any(m in message for m in _ALREADY_KNOWN)


class Transient(Exception):
    """The chain is down or being reconciled for longer than the hold timeout."""


class UpstreamDown(Exception):
    """anvil did not answer (connection refused, reset, timeout, garbage)."""


@dataclass
class _Send:
    req_id: Any
    tx_hash: str
    raw: str
    deadline: float
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class ReconcileReport:
    at: float
    instance: str
    journaled: int
    missing: int
    resent: int
    rejected: int
    unmined: int
    seconds: float
    head_before: int
    head_after: int


class ChainProxy:
    def __init__(self, upstream: str, journal: Journal, *, hold_timeout: float = 5.0,
                 reconcile_timeout: float = 60.0, request_timeout: float = 10.0,
                 watch_interval: float = 0.2) -> None:
        self.upstream = upstream
        self.journal = journal
        self.hold_timeout = hold_timeout
        self.reconcile_timeout = reconcile_timeout
        self.request_timeout = request_timeout
        self.watch_interval = watch_interval
        self.ready = asyncio.Event()
        self.instance: str | None = None
        self.highest_block = -1
        self.reports: list[ReconcileReport] = []
        self._outcomes: dict[str, dict[str, Any]] = {}  # tx hash -> the error anvil gave at a re-send
        self._chain_lock = asyncio.Lock()  # one of: the sequencer forwarding a group, or reconciliation
        self._queue: asyncio.Queue[_Send] = asyncio.Queue()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []
        self._reconciling: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self._unreachable_since: float | None = None  # while reconciling: since when anvil does not answer

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.request_timeout))
        self._lost("proxy started")
        self._tasks = [asyncio.create_task(self._sequencer(), name="sequencer"),
                       asyncio.create_task(self._watchdog(), name="watchdog")]

    async def stop(self) -> None:
        tasks = [*self._tasks, self._reconciling, *self._background]
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._session is not None:
            await self._session.close()
        self.journal.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/", self.handle)
        app.router.add_get("/health", self.health)

        async def on_startup(_: web.Application) -> None:
            await self.start()

        async def on_cleanup(_: web.Application) -> None:
            await self.stop()

        app.on_startup.append(on_startup)
        app.on_cleanup.append(on_cleanup)
        return app

    # -- HTTP ---------------------------------------------------------------------------------------
    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({
            "ready": self.ready.is_set(), "upstream": self.upstream, "instance": self.instance,
            "highest_block": self.highest_block, "journaled": len(self.journal.entries),
            "rejected": len(self.journal.rejected), "torn_bytes_ignored": self.journal.torn_bytes,
            "reconciliations": [r.__dict__ for r in self.reports[-20:]],
        })

    async def handle(self, request: web.Request) -> web.Response:
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return web.json_response(_error(None, -32700, "parse error"))
        try:
            if isinstance(payload, list):
                if not payload:
                    return web.json_response(_error(None, -32600, "empty batch"))
                return web.json_response(await self._batch(payload))
            return web.json_response((await self._batch([payload]))[0])
        except Transient as exc:
            req_id = payload.get("id") if isinstance(payload, dict) else None
            return web.json_response(_error(req_id, TRANSIENT_CODE, f"erx chain proxy: {exc}; not accepted, retry"),
                                     status=503, headers={"Retry-After": "1"})

    async def _batch(self, requests: list[Any]) -> list[dict[str, Any]]:
        answers: list[dict[str, Any] | None] = [None] * len(requests)
        reads: list[tuple[int, dict[str, Any]]] = []
        sends: list[tuple[int, _Send]] = []
        deadline = asyncio.get_running_loop().time() + self.hold_timeout
        for i, req in enumerate(requests):
            if not isinstance(req, dict) or "method" not in req:
                answers[i] = _error(req.get("id") if isinstance(req, dict) else None, -32600, "invalid request")
                continue
            if (why := refusal(req["method"])) is not None:
                LOG.warning("refused %s", req["method"])
                answers[i] = _error(req.get("id"), REFUSED_CODE, why)
                continue
            if req["method"] == SEND:
                params = req.get("params")
                try:
                    raw = params[0]
                    tx_hash = tx_hash_of(raw)
                except (TypeError, IndexError, KeyError, ValueError):
                    reads.append((i, req))  # malformed: anvil answers with its own error, nothing to journal
                    continue
                sends.append((i, _Send(req.get("id"), tx_hash, raw, deadline)))
                continue
            reads.append((i, req))
        # Sends go through the sequencer in the order they appear; reads are forwarded meanwhile.
        for _, send in sends:
            self._queue.put_nowait(send)
        tasks = []
        if reads:
            tasks.append(self._forward_reads([r for _, r in reads], deadline))
        tasks.extend(send.future for _, send in sends)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        first_error = next((r for r in results if isinstance(r, BaseException)), None)
        if first_error is not None and len(requests) == 1:
            raise first_error
        k = 0
        if reads:
            read_answers = results[0]
            k = 1
            for (i, req), answer in zip(reads, read_answers if isinstance(read_answers, list) else [None] * len(reads)):
                answers[i] = answer if answer is not None else _error(req.get("id"), TRANSIENT_CODE,
                                                                      f"erx chain proxy: {read_answers}")
        for (i, send), result in zip(sends, results[k:]):
            answers[i] = result if isinstance(result, dict) else _error(send.req_id, TRANSIENT_CODE,
                                                                        f"erx chain proxy: {result}; not accepted")
        return answers  # type: ignore[return-value]

    # -- reads ------------------------------------------------------------------------------------
    def _down_for_long(self) -> bool:
        """anvil has been unreachable for longer than the hold timeout: answer at once, do not hold."""
        return (self._unreachable_since is not None
                and time.monotonic() - self._unreachable_since > self.hold_timeout)

    async def _wait_ready(self, deadline: float) -> None:
        left = deadline - asyncio.get_running_loop().time()
        if self.ready.is_set():
            return
        if self._down_for_long():
            raise Transient("the chain node is down")
        try:
            await asyncio.wait_for(self.ready.wait(), timeout=max(left, 0))
        except TimeoutError:
            raise Transient("the chain is restarting or being reconciled") from None

    async def _forward_reads(self, requests: list[dict[str, Any]], deadline: float) -> list[dict[str, Any]]:
        """Forwards in one batch with `anvil_metadata`; an answer from another anvil instance than the
        one reconciled is never passed on."""
        while True:
            await self._wait_ready(deadline)
            instance = self.instance
            batch = [{"jsonrpc": "2.0", "id": _IDENTITY_ID, "method": "anvil_metadata", "params": []}]
            batch += [{**req, "id": i} for i, req in enumerate(requests)]
            try:
                answers = await self._post(batch)
            except UpstreamDown as exc:
                self._lost(f"a read failed: {exc}")
                continue
            if not isinstance(answers, list):
                self._lost("anvil answered a batch with a single object")
                continue
            by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
            identity = (by_id.get(_IDENTITY_ID) or {}).get("result") or {}
            if identity.get("instanceId") != instance or instance is None:
                self._lost("anvil restarted (new instance id)")
                continue
            out = []
            for i, req in enumerate(requests):
                answer = by_id.get(i)
                if answer is None:
                    answer = _error(req.get("id"), -32603, "no answer from the node")
                else:
                    answer = {**answer, "id": req.get("id")}
                out.append(answer)
            return out

    # -- sends ------------------------------------------------------------------------------------
    async def _sequencer(self) -> None:
        """The one writer: journals a group of sends (one fsync), then forwards them one by one in
        journal order, so acceptance order and journal order are the same."""
        carry: list[_Send] = []
        while True:
            group = carry or [await self._queue.get()]
            carry = []
            while not self._queue.empty():
                group.append(self._queue.get_nowait())
            # New sends wait while the chain is being reconciled, for their hold timeout at most; one
            # refused then was not journaled and is never applied.
            left = max(s.deadline for s in group) - asyncio.get_running_loop().time()
            if self._down_for_long():
                left = 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ready.wait(), timeout=max(left, 0))
            if not self.ready.is_set():
                for s in group:
                    _resolve(s, Transient("the chain is restarting or being reconciled"))
                continue
            async with self._chain_lock:
                if not self.ready.is_set():  # a reconciliation began meanwhile: wait for it first
                    carry = group
                    continue
                await self._journal_and_forward(group)

    async def _journal_and_forward(self, group: list[_Send]) -> None:
        try:
            await asyncio.to_thread(self.journal.append, [(s.tx_hash, s.raw) for s in group])
        except OSError as exc:  # not durable, so not accepted
            LOG.error("journal write failed: %s", exc)
            for s in group:
                if self.journal.needs_append(s.tx_hash):
                    _resolve(s, Transient(f"the journal could not be written ({exc})"))
            group = [s for s in group if not s.future.done()]
        # Journaled: from here on each transaction is accepted, whatever happens to anvil.
        instance = self.instance
        forward = True
        try:
            if (await self._metadata()).get("instanceId") != instance:
                self._lost("anvil restarted (new instance id)")
                forward = False
        except UpstreamDown as exc:
            self._lost(f"anvil unreachable before a send: {exc}")
            forward = False
        for s in group:
            if forward:
                try:
                    answer = await self._post({"jsonrpc": "2.0", "id": 1, "method": SEND, "params": [s.raw]})
                except UpstreamDown as exc:
                    self._lost(f"a send failed: {exc}")
                    forward = False
                else:
                    _resolve(s, await self._send_answer(s, answer))
                    continue
            # Not forwarded: reconciliation sends it, in journal order; it is answered after that.
            self._spawn(self._answer_after_reconcile(s))

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_answer(self, s: _Send, answer: Any) -> dict[str, Any]:
        if isinstance(answer, dict) and "error" in answer and not _already_known(answer["error"]):
            # Refused. Marked so (never re-sent) only if the node does not have it: a client re-sending a
            # mined transaction gets "nonce too low" too, and that one must be re-applied after a rollback.
            error = answer["error"]
            if not await self._node_has(s.tx_hash):
                self.journal.mark_rejected(s.tx_hash, str(error.get("message", error) if isinstance(error, dict)
                                                          else error))
            return {**answer, "id": s.req_id}
        return {"jsonrpc": "2.0", "id": s.req_id, "result": s.tx_hash}

    async def _node_has(self, tx_hash: str) -> bool:
        """True if anvil has the transaction (pending or mined), or cannot say."""
        try:
            answer = await self._post({"jsonrpc": "2.0", "id": 1, "method": "eth_getTransactionByHash",
                                       "params": [tx_hash]})
        except UpstreamDown:
            return True
        return not isinstance(answer, dict) or answer.get("result") is not None or "error" in answer

    async def _answer_after_reconcile(self, s: _Send) -> None:
        """A journaled transaction is accepted: it is answered with its hash once reconciliation has sent it
        (or with the node's refusal then); after the hold timeout, with its hash anyway."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), timeout=max(s.deadline - loop.time(), 0.5))
        error = self._outcomes.get(s.tx_hash)
        if error is not None:
            _resolve(s, {"jsonrpc": "2.0", "id": s.req_id, "error": error})
        else:
            _resolve(s, {"jsonrpc": "2.0", "id": s.req_id, "result": s.tx_hash})

    # -- reconciliation ---------------------------------------------------------------------------
    def _lost(self, why: str) -> None:
        """anvil went away, restarted or rolled back: hold everything until it is reconciled."""
        if self.ready.is_set() or self.instance is not None:
            LOG.warning("chain needs reconciliation: %s", why)
        self.ready.clear()
        self.instance = None
        if self._reconciling is None or self._reconciling.done():
            self._reconciling = asyncio.create_task(self._reconcile(), name="reconcile")

    async def _reconcile(self) -> None:
        async with self._chain_lock:
            while True:
                try:
                    report = await self._reconcile_once()
                except UpstreamDown:
                    if self._unreachable_since is None:
                        self._unreachable_since = time.monotonic()
                    await asyncio.sleep(0.1)
                    continue
                self._unreachable_since = None
                if report is None:
                    continue  # anvil restarted again meanwhile
                self.reports.append(report)
                level = logging.WARNING if report.resent or report.unmined else logging.INFO
                LOG.log(level, "reconciled with anvil %s in %.2f s: %d journaled, %d missing, %d re-sent, "
                        "%d refused, %d not mined; head %d -> %d", report.instance[:10], report.seconds,
                        report.journaled, report.missing, report.resent, report.rejected, report.unmined,
                        report.head_before, report.head_after)
                self.ready.set()
                return

    async def _reconcile_once(self) -> ReconcileReport | None:
        meta = await self._metadata()
        started = time.monotonic()
        instance = meta["instanceId"]
        head_before = int(meta.get("latestBlockNumber") or 0)
        self._outcomes = {}
        entries = self.journal.pending()
        receipts = await self._receipts([e.tx_hash for e in entries])
        missing = [e for e in entries if receipts.get(e.tx_hash) is None]
        resent: list[JournalEntry] = []
        rejected = 0
        for e in missing:  # in journal order, one by one: acceptance order is preserved (anvil --order fifo)
            answer = await self._post({"jsonrpc": "2.0", "id": 1, "method": SEND, "params": [e.raw]})
            error = answer.get("error") if isinstance(answer, dict) else {"message": "malformed answer"}
            if error is None or _already_known(error):
                resent.append(e)
            else:
                rejected += 1
                self._outcomes[e.tx_hash] = error
                self.journal.mark_rejected(e.tx_hash, str(error.get("message", error)
                                                          if isinstance(error, dict) else error))
        left = {e.tx_hash for e in resent}
        deadline = time.monotonic() + self.reconcile_timeout
        delay = 0.05
        while left and time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)
            mined = await self._receipts(sorted(left))
            left -= {h for h, r in mined.items() if r is not None}
        if left:
            LOG.error("%d re-sent transaction(s) not mined within %.0f s: %s", len(left), self.reconcile_timeout,
                      sorted(left)[:5])
        after = await self._metadata()
        if after["instanceId"] != instance:
            return None
        self.instance = instance
        self.highest_block = int(after.get("latestBlockNumber") or 0)
        return ReconcileReport(at=time.time(), instance=instance, journaled=len(self.journal.entries),
                               missing=len(missing), resent=len(resent), rejected=rejected, unmined=len(left),
                               seconds=round(time.monotonic() - started, 3), head_before=head_before,
                               head_after=self.highest_block)

    async def _watchdog(self) -> None:
        """Notices a restart even when no client is asking, so reconciliation starts at once."""
        while True:
            await asyncio.sleep(self.watch_interval)
            if not self.ready.is_set():
                continue
            instance = self.instance
            try:
                meta = await self._metadata()
            except UpstreamDown as exc:
                if self.ready.is_set():
                    self._lost(f"anvil unreachable: {exc}")
                continue
            if self.ready.is_set() and instance == self.instance:
                if meta.get("instanceId") != instance:
                    self._lost("anvil restarted (new instance id)")
                else:
                    self._saw_block(meta.get("latestBlockNumber"))

    def _saw_block(self, number: Any) -> None:
        """Only the watchdog calls this: its polls are sequential, so a lower head is a rollback."""
        if not isinstance(number, int):
            return
        if number < self.highest_block:
            self._lost(f"anvil's head {number} is below the highest block seen ({self.highest_block})")
        else:
            self.highest_block = number

    # -- upstream -----------------------------------------------------------------------------------
    async def _post(self, payload: Any) -> Any:
        assert self._session is not None
        try:
            async with self._session.post(self.upstream, json=payload) as response:
                return json.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise UpstreamDown(repr(exc)) from exc

    async def _metadata(self) -> dict[str, Any]:
        answer = await self._post({"jsonrpc": "2.0", "id": 1, "method": "anvil_metadata", "params": []})
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, dict) or "instanceId" not in result:
            raise UpstreamDown(f"anvil_metadata answered {answer!r:.200}")
        return result

    async def _receipts(self, hashes: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for start in range(0, len(hashes), _RECEIPT_CHUNK):
            chunk = hashes[start:start + _RECEIPT_CHUNK]
            batch = [{"jsonrpc": "2.0", "id": i, "method": "eth_getTransactionReceipt", "params": [h]}
                     for i, h in enumerate(chunk)]
            answers = await self._post(batch)
            if not isinstance(answers, list):
                raise UpstreamDown(f"receipts batch answered {answers!r:.200}")
            by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
            for i, h in enumerate(chunk):
                answer = by_id.get(i) or {}
                if "error" in answer:
                    raise UpstreamDown(f"eth_getTransactionReceipt: {answer['error']}")
                out[h] = answer.get("result")
        return out


def _resolve(s: _Send, outcome: dict[str, Any] | BaseException) -> None:
    if s.future.done():
        return
    if isinstance(outcome, BaseException):
        s.future.set_exception(outcome)
    else:
        s.future.set_result(outcome)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="anvil's JSON-RPC URL (internal port)")
    parser.add_argument("--journal", type=Path, required=True)
    parser.add_argument("--hold-timeout", type=float, default=5.0)
    parser.add_argument("--reconcile-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    journal = Journal.open(args.journal)
    LOG.info("journal %s: %d transactions, %d refused; forwarding to %s", args.journal, len(journal.entries),
             len(journal.rejected), args.upstream)
    proxy = ChainProxy(args.upstream, journal, hold_timeout=args.hold_timeout,
                       reconcile_timeout=args.reconcile_timeout)
    web.run_app(proxy.app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
