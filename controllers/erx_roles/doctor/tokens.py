"""Token creates of concurrent issuances, coalesced: the creates that arrive while the practice's
previous create transaction is on its way wait together and go as ONE `createBatch`.

The next batch goes when the previous one is mined, or `max_wait_s` after it was sent, whichever is
first: on a chain with one-second blocks, waiting a whole block for the previous receipt would add up
to a block to every issuance behind it (measured: issuance slower than with no batching at all),
while sending at once would make a transaction, with its own receipt polling, per create. So under
load there are a few batches per block instead of a create per prescription, and an issuance waits
at most `max_wait_s` longer than a create of its own.

`submit` answers a future per prescription: the batch's `TxResult`, or the `ChainError` it ended
with (a `ReceiptTimeout` is not a failure: it may still be mined). `journal(prescription_ids,
tx_hash, raw_tx)` is awaited with the signed transaction before it is sent, so that a restarted
controller can finish it (`PrescriptionTokenClient.resume`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from erx_contracts.client import TokenSpec, TxResult
from erx_contracts.errors import ContractError

LOG = logging.getLogger("erx.doctor.tokens")
MAX_BATCH = 100  # tokens per createBatch: well inside a block's gas
MAX_WAIT_S = 0.25  # how long the next batch waits for the previous one's receipt

BatchJournal = Callable[[list[str], str, str], Awaitable[None]]


class TokenBatcher:
    def __init__(self, chain: Any, journal: BatchJournal, max_batch: int = MAX_BATCH,
                 max_wait_s: float = MAX_WAIT_S):
        self._chain = chain
        self._journal = journal
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._queue: list[tuple[str, TokenSpec, asyncio.Future[TxResult]]] = []
        self._runner: asyncio.Task | None = None
        self._in_flight: asyncio.Task | None = None  # the latest batch, until it is mined (or failed)
        self._in_flight_sent_at = 0.0
        self._sending: set[asyncio.Task] = set()
        self.batches_sent = 0  # transactions sent (for tests and logs)

    def submit(self, prescription_id: str, spec: TokenSpec) -> asyncio.Future[TxResult]:
        future: asyncio.Future[TxResult] = asyncio.get_running_loop().create_future()
        self._queue.append((prescription_id, spec, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="token-batcher")
        return future

    async def close(self) -> None:
        """Stop (the controller shuts down): what is journaled is finished after the restart."""
        tasks = [t for t in (self._runner, *self._sending) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)  # the issuances of this very moment join the first batch
        try:
            while self._queue:
                previous = self._in_flight
                if previous is not None and not previous.done():
                    left = self._in_flight_sent_at + self.max_wait_s - loop.time()
                    if left > 0:
                        await asyncio.wait({previous}, timeout=left)
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                sent = asyncio.Event()
                task = asyncio.create_task(self._send(batch, sent), name="token-batch")
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
                self._in_flight = task
                await sent.wait()  # the next batch collects at least while this one is signed and sent
                self._in_flight_sent_at = loop.time()
        except asyncio.CancelledError:
            for *_, future in self._queue:
                future.cancel()
            raise

    async def _send(self, batch: list[tuple[str, TokenSpec, asyncio.Future[TxResult]]],
                    sent: asyncio.Event | None = None) -> None:
        ids = [pid for pid, _, _ in batch]

        async def journal(tx_hash: str, raw_tx: str) -> None:
            await self._journal(ids, tx_hash, raw_tx)
            if sent is not None:
                sent.set()

        self.batches_sent += 1
        try:
            await self._create(batch, journal)
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        finally:
            if sent is not None:
                sent.set()

    async def _create(self, batch: list[tuple[str, TokenSpec, asyncio.Future[TxResult]]], journal) -> None:
        try:
            if len(batch) == 1:
                spec = batch[0][1]
                result = await self._chain.create(spec.token, redemptions=spec.redemptions,
                                                  not_before=spec.not_before, not_after=spec.not_after,
                                                  journal=journal)
            else:
                result = await self._chain.create_batch([spec for _, spec, _ in batch], journal=journal)
        except ContractError as exc:
            if exc.tx_hash is None and len(batch) > 1:
                # refused by the preflight, nothing sent: one entry spoils the batch; send each alone
                LOG.warning("a batch of %d creates was refused (%s): sending them one by one", len(batch), exc)
                self.batches_sent -= 1
                await asyncio.gather(*(self._send([one]) for one in batch))
                return
            _settle(batch, exc)
            return
        except Exception as exc:  # noqa: BLE001 - not swallowed: every waiter of the batch gets it
            _settle(batch, exc)
            return
        LOG.info("%d token(s) created in %s (block %d)", len(batch), result.tx_hash, result.block_number)
        for *_, future in batch:
            if not future.done():
                future.set_result(result)


def _settle(batch, exc: BaseException) -> None:
    for *_, future in batch:
        if not future.done():
            future.set_exception(exc)
