"""The append-only journal of every signed transaction the dev chain accepted.

One JSON object per line, in the order the journaling proxy accepted the transactions (across all
organisations):

    {"n": 17, "hash": "0x…", "raw": "0x…"}        a transaction, fsync'ed before it is forwarded
    {"rejected": "0x…", "error": "nonce too low"}  the node refused it: never re-sent

A line is only complete with its newline. A proxy killed in the middle of a write leaves a torn last
line: it is ignored and cut off when the journal is opened again (its fsync never completed, so the
transaction was never forwarded nor acknowledged). Nothing is ever rewritten in place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from eth_utils import keccak

LOG = logging.getLogger("erx_chain.journal")


@dataclass(frozen=True)
class JournalEntry:
    n: int  # position in the journal: the order of acceptance
    tx_hash: str  # 0x-prefixed, lower case
    raw: str  # 0x-prefixed signed transaction (EIP-2718 envelope or legacy RLP)


def tx_hash_of(raw: str) -> str:
    """The transaction hash of a signed raw transaction: keccak-256 of its bytes (legacy and typed alike)."""
    if not isinstance(raw, str) or not raw.startswith("0x") or len(raw) < 4:
        raise ValueError("not a 0x-prefixed hex string")
    return "0x" + keccak(bytes.fromhex(raw[2:])).hex()


class Journal:
    """Open with `Journal.open(path)`. Not thread-safe: one writer (the proxy's sequencer) at a time."""

    def __init__(self, path: Path, fd: int, entries: list[JournalEntry], rejected: dict[str, str],
                 fsync: Callable[[int], None] = os.fsync) -> None:
        self.path = path
        self._fd = fd
        self.entries = entries
        self.rejected = rejected
        self._fsync = fsync
        self._hashes = {e.tx_hash for e in entries}
        self.torn_bytes = 0  # what `open` cut off

    @classmethod
    def open(cls, path: Path, fsync: Callable[[int], None] = os.fsync) -> Journal:
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        if created:  # the new directory entry must be durable too
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                fsync(dir_fd)
            finally:
                os.close(dir_fd)
        with open(path, "rb") as f:
            data = f.read()
        complete_end = data.rfind(b"\n") + 1  # 0 if there is no complete line
        entries: list[JournalEntry] = []
        rejected: dict[str, str] = {}
        for number, line in enumerate(data[:complete_end].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if "rejected" in record:
                    rejected[str(record["rejected"]).lower()] = str(record.get("error", ""))
                else:
                    entry = JournalEntry(n=int(record["n"]), tx_hash=str(record["hash"]).lower(),
                                         raw=str(record["raw"]))
                    if rejected.pop(entry.tx_hash, None) is not None:  # refused once, accepted later
                        entries = [e for e in entries if e.tx_hash != entry.tx_hash]
                    entries.append(entry)
            except (ValueError, KeyError, TypeError):
                LOG.warning("%s line %d is not a journal record; skipped", path, number)
        journal = cls(path, fd, entries, rejected, fsync)
        if complete_end < len(data):
            # A write the proxy did not finish: cut it off, so the next record starts on its own line.
            journal.torn_bytes = len(data) - complete_end
            os.ftruncate(fd, complete_end)
            fsync(fd)
            LOG.warning("%s: ignored a torn last line (%d bytes) left by an interrupted write", path,
                        journal.torn_bytes)
        return journal

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __contains__(self, tx_hash: str) -> bool:
        return tx_hash.lower() in self._hashes

    @property
    def next_n(self) -> int:
        return self.entries[-1].n + 1 if self.entries else 0

    def needs_append(self, tx_hash: str) -> bool:
        """False if the transaction is journaled and not refused: sending it again needs no new record."""
        tx_hash = tx_hash.lower()
        return tx_hash not in self._hashes or tx_hash in self.rejected

    def append(self, raws: list[tuple[str, str]]) -> list[JournalEntry]:
        """Appends (tx_hash, raw) pairs, in order, and fsyncs once: when this returns they are durable.
        A transaction already journaled is not written again (it keeps its position), unless the node
        had refused it: then it is journaled anew, at the end. On a write error the file is cut back."""
        new: list[JournalEntry] = []
        n = self.next_n
        for tx_hash, raw in raws:
            tx_hash = tx_hash.lower()
            if not self.needs_append(tx_hash) or any(e.tx_hash == tx_hash for e in new):
                continue
            new.append(JournalEntry(n=n, tx_hash=tx_hash, raw=raw))
            n += 1
        if not new:
            return new
        data = b"".join(json.dumps({"n": e.n, "hash": e.tx_hash, "raw": e.raw}, separators=(",", ":")).encode()
                        + b"\n" for e in new)
        size = os.fstat(self._fd).st_size
        try:
            _write_all(self._fd, data)
            self._fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):  # never leave records nobody was told about
                os.ftruncate(self._fd, size)
            raise
        again = {e.tx_hash for e in new if e.tx_hash in self.rejected}
        if again:
            self.entries = [e for e in self.entries if e.tx_hash not in again]
            for tx_hash in again:
                del self.rejected[tx_hash]
        self.entries.extend(new)
        self._hashes.update(e.tx_hash for e in new)
        return new

    def mark_rejected(self, tx_hash: str, error: str) -> None:
        """The node refused the transaction: it is not re-sent at reconciliation. Not fsync'ed: if the
        mark is lost, the transaction is re-sent once more and refused again."""
        tx_hash = tx_hash.lower()
        if tx_hash in self.rejected:
            return
        self.rejected[tx_hash] = error
        line = json.dumps({"rejected": tx_hash, "error": error[:300]}, separators=(",", ":")).encode() + b"\n"
        _write_all(self._fd, line)

    def pending(self) -> list[JournalEntry]:
        """Every transaction that must be on chain, in journal order: all but the rejected ones."""
        return [e for e in self.entries if e.tx_hash not in self.rejected]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
