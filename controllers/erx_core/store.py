"""A controller's durable records: one SQLite file per controller, JSON documents keyed by id.

Controllers keep few records (prescriptions issued, presentation checks, dispenses) and each write
is small, so a synchronous SQLite call in WAL mode with `synchronous=FULL` is both simple and
crash-safe: a record that `put()` returned for is on disk.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Generic, Iterator, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (kind TEXT, id TEXT, updated REAL, doc TEXT, PRIMARY KEY (kind, id))")

    def table(self, kind: str, model: type[M]) -> Table[M]:
        return Table(self._db, kind, model)

    def close(self) -> None:
        self._db.close()


class Table(Generic[M]):
    def __init__(self, db: sqlite3.Connection, kind: str, model: type[M]):
        self._db, self.kind, self.model = db, kind, model

    def put(self, record_id: str, record: M) -> M:
        self._db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)",
                         (self.kind, record_id, time.time(), record.model_dump_json()))
        return record

    def get(self, record_id: str) -> M | None:
        row = self._db.execute("SELECT doc FROM records WHERE kind=? AND id=?", (self.kind, record_id)).fetchone()
        return self.model.model_validate_json(row[0]) if row else None

    def delete(self, record_id: str) -> None:
        self._db.execute("DELETE FROM records WHERE kind=? AND id=?", (self.kind, record_id))

    def all(self) -> Iterator[M]:
        """Newest first."""
        for (doc,) in self._db.execute("SELECT doc FROM records WHERE kind=? ORDER BY updated DESC", (self.kind,)):
            yield self.model.model_validate_json(doc)
