"""A controller's durable records: JSON documents keyed by id, in one SQLite file per controller (the
embedded default) or in a PostgreSQL database of its own.

Controllers keep few records (prescriptions issued, presentation checks, dispenses) and each write
is small, so a synchronous call on one connection is both simple and crash-safe: a record that
`put()` returned for is on disk (SQLite in WAL mode with `synchronous=FULL`; PostgreSQL commits
with `synchronous_commit=on`, its default).

Writes that must land together (a record and the webhook event announcing it) go in one
`store.transaction()`; outside of one, every statement commits on its own.

Lists are read a page at a time (`Table.page`), newest first by insertion: a record keeps its
position (SQLite's rowid, a PostgreSQL identity column) when it is updated (`put` updates in place),
so a cursor (the last position a page returned) stays valid and no record is skipped or repeated
while new ones arrive. The store never runs VACUUM, which may renumber rowids of a SQLite table
without an INTEGER PRIMARY KEY.

Every statement is written once, in the SQL both databases speak, with `?` placeholders; the few
differences (placeholders, the position column, JSON field expressions, how a transaction starts)
are a `Dialect`'s. Components keeping their own tables in the same database (the webhook outbox)
run their statements through `Store.execute` and build what differs from `Store.dialect`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import select
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
LOG = logging.getLogger("erx.store")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Dialect:
    """What differs between the databases the store runs on, and nothing else."""

    name: str
    position: str  # the column numbering a table's rows in insertion order
    begin: tuple[str, ...]  # the statements opening an outermost transaction
    explain: str  # prefix of a statement that shows its query plan (tests)

    def connect(self, location: str | Path) -> Any:
        raise NotImplementedError

    def sql(self, statement: str) -> str:
        """`statement` with this database's placeholders (statements are written with `?`)."""
        return statement

    def field(self, name: str) -> str:
        """The expression for top-level field `name` of a record's JSON `doc` (indexes spell it the same)."""
        raise NotImplementedError

    def create_table(self, name: str, columns: str, *, ordered: bool = False) -> str:
        """CREATE TABLE IF NOT EXISTS; `ordered`: it needs `position` (SQLite tables have their rowid)."""
        return f"CREATE TABLE IF NOT EXISTS {name} ({columns})"

    def ordered_index(self, columns: str) -> str:
        """The columns of an index whose entries are also ordered by `position` (SQLite's hold the rowid)."""
        return f"{columns}, {self.position}"

    def in_transaction(self, db: Any) -> bool:
        raise NotImplementedError

    def broken(self, db: Any) -> bool:
        """The connection is lost (the server restarted) and must be opened again."""
        return False


class SQLiteDialect(Dialect):
    name, position, explain = "sqlite", "rowid", "EXPLAIN QUERY PLAN"
    # IMMEDIATE: the write lock is taken at once, so transactions of several connections never interleave
    begin = ("BEGIN IMMEDIATE",)

    def connect(self, location: str | Path) -> sqlite3.Connection:
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def field(self, name: str) -> str:
        return f"json_extract(doc, '$.{name}')"

    def ordered_index(self, columns: str) -> str:
        return columns

    def in_transaction(self, db: sqlite3.Connection) -> bool:
        return db.in_transaction


class PostgresDialect(Dialect):
    name, position, explain = "postgresql", "pos", "EXPLAIN (COSTS OFF)"
    # As SQLite's BEGIN IMMEDIATE: one transaction at a time per database, whichever connection opens it.
    # (An advisory lock is scoped to the current database.)
    begin = ("BEGIN", "SELECT pg_advisory_xact_lock(4631236347105424710)")

    def connect(self, location: str | Path) -> Any:
        import psycopg  # only controllers on PostgreSQL need it loaded

        return psycopg.connect(str(location), autocommit=True, connect_timeout=10)

    def sql(self, statement: str) -> str:
        # psycopg's placeholders are %s; statements hold no literal `?` or `%`
        return statement.replace("%", "%%").replace("?", "%s")

    def field(self, name: str) -> str:
        return f"(doc::jsonb ->> '{name}')"

    def create_table(self, name: str, columns: str, *, ordered: bool = False) -> str:
        position = f", {self.position} BIGINT GENERATED ALWAYS AS IDENTITY" if ordered else ""
        return f"CREATE TABLE IF NOT EXISTS {name} ({columns}{position})"

    def in_transaction(self, db: Any) -> bool:
        from psycopg.pq import TransactionStatus

        return db.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR)

    def broken(self, db: Any) -> bool:
        if db.closed or db.broken:
            return True
        # A server shutting down tells its idle clients so (or just closes): anything waiting to be read on a
        # connection between statements means it is gone. Known before a statement is sent, never after.
        readable, _, _ = select.select([db.fileno()], [], [], 0)
        return bool(readable)


class Store:
    def __init__(self, location: Path | str):
        """`location`: an SQLite file's path, or a `postgresql://user:password@host:port/database` URL
        (which holds a password: it is never logged, and not kept in `repr`)."""
        postgres = isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)
        self.dialect: Dialect = PostgresDialect() if postgres else SQLiteDialect()
        self._location = location
        self._db = self.dialect.connect(location)
        self._depth = 0  # open transaction() blocks: 0 = autocommit, 1 = BEGIN, more = savepoints
        self._after: list[Callable[[], None]] = []
        self._tables: list[Table] = []
        self.create_schema(
            self.dialect.create_table("records", "kind TEXT, id TEXT, updated DOUBLE PRECISION, doc TEXT, "
                                                 "PRIMARY KEY (kind, id)", ordered=True),
            # entries sorted by (kind, position): a page of one kind is a range of this index, no sort
            f"CREATE INDEX IF NOT EXISTS records_by_kind ON records ({self.dialect.ordered_index('kind')})")

    def __repr__(self) -> str:
        if self.dialect.name == "sqlite":
            return f"Store({str(self._location)!r})"
        url = urlsplit(str(self._location))  # without the password
        return f"Store('{url.scheme}://{url.username}@{url.hostname}:{url.port}{url.path}')"

    def create_schema(self, *statements: str) -> None:
        """Run CREATE ... IF NOT EXISTS statements in one transaction: two connections opening the same new
        database (a controller, a tool) take turns instead of racing to create the same table."""
        with self.transaction():
            for statement in statements:
                self.execute(statement)

    @property
    def connection(self) -> Any:
        """The one connection (sqlite3 or psycopg, see `dialect`); `execute` speaks to it in either dialect."""
        return self._db

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement (written with `?` placeholders) on the store's connection."""
        return self._connected().execute(self.dialect.sql(statement), params)

    def executemany(self, statement: str, rows: Iterable[Sequence[Any]]) -> None:
        with closing(self._connected().cursor()) as cursor:
            cursor.executemany(self.dialect.sql(statement), rows)

    def _connected(self) -> Any:
        # A PostgreSQL connection lost between transactions (the server restarted) is opened anew; one
        # lost inside a transaction, or while a statement runs, is not: that fails (whether it took effect
        # is not known, so it is never sent again), and the next statement connects again.
        if self._depth == 0 and self.dialect.broken(self._db):
            LOG.warning("the database connection was lost; connecting again")
            self._db.close()
            self._db = self.dialect.connect(self._location)
        return self._db

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes in the block commit together, or none does (the block raised).

        Nests: an inner block is a savepoint, so it rolls back alone if it raises and its caller
        handles that. The connection is shared by the whole controller: do not `await` inside the
        block, or other coroutines' writes join (and share the fate of) this transaction. On
        PostgreSQL a statement that fails aborts the transaction (or savepoint) it is in: the block
        must let that error through, not carry on.
        """
        depth = self._depth
        savepoint = f"erx_sp{depth}"
        for statement in self.dialect.begin if depth == 0 else (f"SAVEPOINT {savepoint}",):
            self.execute(statement)
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth = depth
            # The database may already have rolled back on its own (e.g. SQLite on a full disk, or a lost
            # connection): then there is nothing to undo.
            if self.dialect.in_transaction(self._db):
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
            if self.dialect.in_transaction(self._db):
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
        table = Table(self, kind, model, indexed)
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
    def __init__(self, store: Store, kind: str, model: type[M], indexed: tuple[str, ...] = ()):
        self._store, self.kind, self.model = store, kind, model
        self.indexed = indexed
        self.unreadable: dict[str, str] = {}  # record id -> why the model refused it
        for field in indexed:
            if not _FIELD.fullmatch(field) or field not in model.model_fields:
                raise ValueError(f"cannot index {kind}.{field}: not a top-level field name")
            # An expression index: the lookups below spell the expression the same way, to use it.
            store.create_schema(f"CREATE INDEX IF NOT EXISTS records_by_{field} "
                                f"ON records (kind, {store.dialect.field(field)})")

    def _by_field(self, field: str, value: str) -> list:
        if field not in self.indexed:
            raise ValueError(f"{self.kind}.{field} is not indexed")
        return self._store.execute(f"SELECT id, doc FROM records WHERE kind=? AND {self._store.dialect.field(field)}=? "
                                   "ORDER BY updated DESC", (self.kind, value)).fetchall()

    def find(self, field: str, value: str) -> M | None:
        """The record whose `field` equals `value` (the newest, should there be several)."""
        return next(self._readable(self._by_field(field, value)), None)

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
        # an update in place keeps the record's position in `page()`
        self._store.execute("INSERT INTO records (kind, id, updated, doc) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (kind, id) DO UPDATE SET updated=excluded.updated, doc=excluded.doc",
                            (self.kind, record_id, time.time(), record.model_dump_json()))
        return record

    def get(self, record_id: str) -> M | None:
        """The record, None if there is none; UnreadableRecord if it is there but cannot be read."""
        row = self._store.execute("SELECT doc FROM records WHERE kind=? AND id=?", (self.kind, record_id)).fetchone()
        if row is None:
            return None
        record = self._load(record_id, row[0])
        if record is None:
            raise UnreadableRecord(self.kind, record_id, self.unreadable[record_id])
        return record

    def find_all(self, field: str, value: str) -> Iterator[M]:
        """Every record whose `field` equals `value`, newest first."""
        yield from self._readable(self._by_field(field, value))

    def delete(self, record_id: str) -> None:
        self._store.execute("DELETE FROM records WHERE kind=? AND id=?", (self.kind, record_id))

    def all(self) -> Iterator[M]:
        """Newest first."""
        yield from self._readable(
            self._store.execute("SELECT id, doc FROM records WHERE kind=? ORDER BY updated DESC", (self.kind,)))

    def page(self, limit: int, after: str | None = None) -> TablePage[M]:
        """Up to `limit` records, newest first by insertion (an update does not move a record), after the
        cursor `after` (the `next` of the previous page; None: from the newest). Records inserted while
        a client pages appear before its first page, never within its later ones. Raises InvalidCursor."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        position = self._store.dialect.position
        query, args = f"SELECT {position}, id, doc FROM records WHERE kind=?", [self.kind]
        if after is not None:
            query += f" AND {position}<?"
            args.append(self._position(after))
        rows = self._store.execute(query + f" ORDER BY {position} DESC LIMIT ?", (*args, limit + 1)).fetchall()
        (total,) = self._store.execute("SELECT COUNT(*) FROM records WHERE kind=?", (self.kind,)).fetchone()
        more = len(rows) > limit
        rows = rows[:limit]
        return TablePage(items=list(self._readable((record_id, doc) for _, record_id, doc in rows)),
                         next=self._cursor(rows[-1][0]) if more else None, total=total)

    # A cursor is opaque to clients: the kind it belongs to and a position, base64url without padding.
    def _cursor(self, position: int) -> str:
        return base64.urlsafe_b64encode(f"{self.kind}:{position}".encode()).decode().rstrip("=")

    def _position(self, cursor: str) -> int:
        try:
            kind, _, position = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().rpartition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidCursor("not a cursor of this list") from None
        if kind != self.kind or not position.isascii() or not position.isdigit() or len(position) > 19 \
                or int(position) >= 2 ** 63:
            raise InvalidCursor("not a cursor of this list")  # positions are 64-bit signed integers
        return int(position)
