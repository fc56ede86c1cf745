"""A controller's durable records: one SQLite file per controller, JSON documents keyed by id.

Controllers keep few records (prescriptions issued, presentation checks, dispenses) and each write
is small, so a synchronous SQLite call in WAL mode with `synchronous=FULL` is both simple and
crash-safe: a record that `put()` returned for is on disk.

Writes that must land together (a record and the webhook event announcing it) go in one
`store.transaction()`; outside of one, every statement commits on its own.

Lists are read a page at a time (`Table.page`), newest first by insertion: a record keeps its SQLite
rowid when it is updated (`put` updates in place), so a cursor (the last rowid a page returned) stays
valid and no record is skipped or repeated while new ones arrive. The store never runs VACUUM, which
may renumber rowids of a table without an INTEGER PRIMARY KEY.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

from pydantic import BaseModel, ValidationError

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
        # entries sorted by (kind, rowid): a page of one kind is a range of this index, no sort
        self._db.execute("CREATE INDEX IF NOT EXISTS records_by_kind ON records (kind)")
        self._depth = 0  # open transaction() blocks: 0 = autocommit, 1 = BEGIN, more = savepoints
        self._after: list[Callable[[], None]] = []
        self._tables: list[Table] = []

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
        table = Table(self._db, kind, model, indexed)
        self._tables.append(table)
        return table

    def unreadable(self) -> dict[str, str]:
        """Every record a table found it cannot read ("<kind> <id>" -> why), for the operator."""
        return {f"{t.kind} {record_id}": why for t in self._tables for record_id, why in t.unreadable.items()}

    def close(self) -> None:
        self._db.close()


class InvalidCursor(ValueError):
    """A page cursor this table did not hand out."""


class UnreadableRecord(LookupError):
    """A stored record the current model cannot read (written by an older version under looser rules,
    or damaged). Lists skip it, a direct read raises this; either way it is listed in `unreadable`
    for the operator and never stops the controller."""

    def __init__(self, kind: str, record_id: str, reason: str):
        super().__init__(f"{kind} {record_id} cannot be read: {reason}")
        self.kind, self.record_id, self.reason = kind, record_id, reason


@dataclass(frozen=True)
class TablePage(Generic[M]):
    items: list[M]
    next: str | None  # the cursor of the following page; None: this was the last
    total: int  # records of this kind, at the time of the read


class Table(Generic[M]):
    def __init__(self, db: sqlite3.Connection, kind: str, model: type[M], indexed: tuple[str, ...] = ()):
        self._db, self.kind, self.model = db, kind, model
        self.indexed = indexed
        self.unreadable: dict[str, str] = {}  # record id -> why the model refused it
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
        rows = self._db.execute(f"SELECT id, doc FROM records WHERE kind=? AND json_extract(doc, '$.{field}')=? "
                                "ORDER BY updated DESC", (self.kind, value)).fetchall()
        return next(self._readable(rows), None)

    def _load(self, record_id: str, doc: str) -> M | None:
        try:
            record = self.model.model_validate_json(doc)
        except ValidationError as exc:
            reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                               for e in exc.errors(include_url=False, include_input=False))[:300]
            if self.unreadable.get(record_id) != reason:
                LOG.error("%s %s is unreadable and set aside: %s", self.kind, record_id, reason)
            self.unreadable[record_id] = reason
            return None
        self.unreadable.pop(record_id, None)
        return record

    def _readable(self, rows) -> Iterator[M]:
        for record_id, doc in rows:
            if (record := self._load(record_id, doc)) is not None:
                yield record

    def put(self, record_id: str, record: M) -> M:
        # an update in place keeps the record's rowid, i.e. its position in `page()`
        self._db.execute("INSERT INTO records VALUES (?, ?, ?, ?) ON CONFLICT (kind, id) DO UPDATE "
                         "SET updated=excluded.updated, doc=excluded.doc",
                         (self.kind, record_id, time.time(), record.model_dump_json()))
        return record

    def get(self, record_id: str) -> M | None:
        """The record, None if there is none; UnreadableRecord if it is there but cannot be read."""
        row = self._db.execute("SELECT doc FROM records WHERE kind=? AND id=?", (self.kind, record_id)).fetchone()
        if row is None:
            return None
        record = self._load(record_id, row[0])
        if record is None:
            raise UnreadableRecord(self.kind, record_id, self.unreadable[record_id])
        return record

    def find_all(self, field: str, value: str) -> Iterator[M]:
        """Every record whose `field` equals `value`, newest first."""
        if field not in self.indexed:
            raise ValueError(f"{self.kind}.{field} is not indexed")
        yield from self._readable(self._db.execute(
            f"SELECT id, doc FROM records WHERE kind=? AND json_extract(doc, '$.{field}')=? ORDER BY updated DESC",
            (self.kind, value)).fetchall())

    def delete(self, record_id: str) -> None:
        self._db.execute("DELETE FROM records WHERE kind=? AND id=?", (self.kind, record_id))

    def all(self) -> Iterator[M]:
        """Newest first."""
        yield from self._readable(
            self._db.execute("SELECT id, doc FROM records WHERE kind=? ORDER BY updated DESC", (self.kind,)))

    def page(self, limit: int, after: str | None = None) -> TablePage[M]:
        """Up to `limit` records, newest first by insertion (an update does not move a record), after the
        cursor `after` (the `next` of the previous page; None: from the newest). Records inserted while
        a client pages appear before its first page, never within its later ones. Raises InvalidCursor."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        query, args = "SELECT rowid, id, doc FROM records WHERE kind=?", [self.kind]
        if after is not None:
            query += " AND rowid<?"
            args.append(self._rowid(after))
        rows = self._db.execute(query + " ORDER BY rowid DESC LIMIT ?", (*args, limit + 1)).fetchall()
        (total,) = self._db.execute("SELECT COUNT(*) FROM records WHERE kind=?", (self.kind,)).fetchone()
        more = len(rows) > limit
        rows = rows[:limit]
        return TablePage(items=list(self._readable((record_id, doc) for _, record_id, doc in rows)),
                         next=self._cursor(rows[-1][0]) if more else None, total=total)

    # A cursor is opaque to clients: the kind it belongs to and a rowid, base64url without padding.
    def _cursor(self, rowid: int) -> str:
        return base64.urlsafe_b64encode(f"{self.kind}:{rowid}".encode()).decode().rstrip("=")

    def _rowid(self, cursor: str) -> int:
        try:
            kind, _, rowid = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().rpartition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidCursor("not a cursor of this list") from None
        if kind != self.kind or not rowid.isascii() or not rowid.isdigit() or len(rowid) > 19:
            raise InvalidCursor("not a cursor of this list")
        return int(rowid)
