"""A controller's durable records: one SQLite file per controller, JSON documents keyed by id.

Controllers keep few records (prescriptions issued, presentation checks, dispenses) and each write
is small, so a synchronous SQLite call in WAL mode with `synchronous=FULL` is both simple and
crash-safe: a record that `put()` returned for is on disk.

Writes that must land together (a record and the webhook event announcing it) go in one
`store.transaction()`; outside of one, every statement commits on its own.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)
_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
LOG = logging.getLogger("erx.store")


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (kind TEXT, id TEXT, updated REAL, doc TEXT, PRIMARY KEY (kind, id))")
        self._depth = 0  # open transaction() blocks: 0 = autocommit, 1 = BEGIN, more = savepoints
        self._after: list[Callable[[], None]] = []

    @property
    def connection(self) -> sqlite3.Connection:
        """The one connection, for components keeping their own tables in this file (the webhook outbox)."""
        return self._db

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes in the block commit together, or none does (the block raised).

        Nests: an inner block is a savepoint, so it rolls back alone if it raises and its caller
        handles that. The connection is shared by the whole controller: do not `await` inside the
        block, or other coroutines' writes join (and share the fate of) this transaction.
        """
        depth = self._depth
        savepoint = f"erx_sp{depth}"
        self._db.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {savepoint}")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth = depth
            # SQLite may already have rolled back on its own (e.g. disk full): then there is nothing to undo.
            if self._db.in_transaction:
                if depth == 0:
                    self._db.execute("ROLLBACK")
                else:
                    self._db.execute(f"ROLLBACK TO {savepoint}")
                    self._db.execute(f"RELEASE {savepoint}")
            if depth == 0:
                self._run_after()
            raise
        self._depth = depth
        if depth:
            self._db.execute(f"RELEASE {savepoint}")
            return
        try:
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        finally:
            self._run_after()

    def after_transaction(self, callback: Callable[[], None]) -> None:
        """Call `callback` once no transaction is open: now, or when the outermost one ends (either way).

        For waking readers that must not see rows a transaction may still roll back."""
        if self._depth == 0:
            callback()
        else:
            self._after.append(callback)

    def _run_after(self) -> None:
        callbacks, self._after = self._after, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                LOG.exception("after-transaction callback failed")

    def table(self, kind: str, model: type[M], *, indexed: tuple[str, ...] = ()) -> Table[M]:
        """Records of one kind. `indexed` names top-level fields that `Table.find` looks up by index
        (e.g. the agent's exchange id, which every agent webhook carries)."""
        return Table(self._db, kind, model, indexed)

    def close(self) -> None:
        self._db.close()


class Table(Generic[M]):
    def __init__(self, db: sqlite3.Connection, kind: str, model: type[M], indexed: tuple[str, ...] = ()):
        self._db, self.kind, self.model = db, kind, model
        self.indexed = indexed
        for field in indexed:
            if not _FIELD.fullmatch(field) or field not in model.model_fields:
                raise ValueError(f"cannot index {kind}.{field}: not a top-level field name")
            # An expression index: the lookup below must spell the expression the same way to use it.
            self._db.execute(f"CREATE INDEX IF NOT EXISTS records_by_{field} "
                             f"ON records (kind, json_extract(doc, '$.{field}'))")

    def find(self, field: str, value: str) -> M | None:
        """The record whose `field` equals `value` (the newest, should there be several)."""
        if field not in self.indexed:
            raise ValueError(f"{self.kind}.{field} is not indexed")
        row = self._db.execute(f"SELECT doc FROM records WHERE kind=? AND json_extract(doc, '$.{field}')=? "
                               "ORDER BY updated DESC LIMIT 1", (self.kind, value)).fetchone()
        return self.model.model_validate_json(row[0]) if row else None

    def put(self, record_id: str, record: M) -> M:
        self._db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)",
                         (self.kind, record_id, time.time(), record.model_dump_json()))
        return record

    def get(self, record_id: str) -> M | None:
        row = self._db.execute("SELECT doc FROM records WHERE kind=? AND id=?", (self.kind, record_id)).fetchone()
        return self.model.model_validate_json(row[0]) if row else None

    def find_all(self, field: str, value: str) -> Iterator[M]:
        """Every record whose `field` equals `value`, newest first."""
        if field not in self.indexed:
            raise ValueError(f"{self.kind}.{field} is not indexed")
        for (doc,) in self._db.execute(f"SELECT doc FROM records WHERE kind=? AND json_extract(doc, '$.{field}')=? "
                                       "ORDER BY updated DESC", (self.kind, value)).fetchall():
            yield self.model.model_validate_json(doc)

    def delete(self, record_id: str) -> None:
        self._db.execute("DELETE FROM records WHERE kind=? AND id=?", (self.kind, record_id))

    def all(self) -> Iterator[M]:
        """Newest first."""
        for (doc,) in self._db.execute("SELECT doc FROM records WHERE kind=? ORDER BY updated DESC", (self.kind,)):
            yield self.model.model_validate_json(doc)
