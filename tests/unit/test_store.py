"""Controller records: lookups by an indexed field use the index, not a scan of every record.

Every test here runs on SQLite (the embedded default) through the `store_factory` fixture;
tests/integration/test_postgres.py runs the same tests on a real PostgreSQL cluster by giving them
a `store_factory` of its own.
"""

from collections.abc import Callable, Iterator

import pytest
from pydantic import BaseModel

from erx_core.store import InvalidCursor, Store

StoreFactory = Callable[[], Store]  # opens (again) the one store of a test; closed after the test


def opener(location) -> Iterator[StoreFactory]:
    """A `store_factory` over `location` (an SQLite path or a PostgreSQL URL), closing what it opened."""
    opened: list[Store] = []

    def open_store() -> Store:
        opened.append(Store(location))
        return opened[-1]

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def store_factory(tmp_path) -> Iterator[StoreFactory]:
    yield from opener(tmp_path / "controller.db")


def plan(store: Store, statement: str, params: tuple) -> str:
    """The database's plan for `statement`, with scans of the whole table priced out: whether an index
    can serve it is the question (PostgreSQL's planner rightly reads a table of a few rows whole)."""
    if store.dialect.name == "postgresql":
        store.execute("SET enable_seqscan = off")
    return " ".join(str(row) for row in store.execute(f"{store.dialect.explain} {statement}", params))


class Check(BaseModel):
    check_id: str
    pres_ex_id: str | None = None


def test_find_by_an_indexed_field_uses_the_index(store_factory):
    store = store_factory()
    checks = store.table("check", Check, indexed=("pres_ex_id",))
    for i in range(50):
        checks.put(f"c{i}", Check(check_id=f"c{i}", pres_ex_id=f"p{i}"))
    store.table("other", Check).put("x", Check(check_id="x", pres_ex_id="p7"))  # same value, other kind

    assert checks.find("pres_ex_id", "p7") == Check(check_id="c7", pres_ex_id="p7")
    assert checks.find("pres_ex_id", "nope") is None
    query = plan(store, f"SELECT doc FROM records WHERE kind=? AND {store.dialect.field('pres_ex_id')}=? "
                        "ORDER BY updated DESC LIMIT 1", ("check", "p7"))
    assert "records_by_pres_ex_id" in query, query


def test_only_declared_top_level_fields_can_be_indexed(store_factory):
    store = store_factory()
    with pytest.raises(ValueError):
        store.table("check", Check, indexed=("nope",))
    with pytest.raises(ValueError):
        store.table("check", Check, indexed=("pres_ex_id') OR 1=1 --",))
    with pytest.raises(ValueError):
        store.table("check", Check).find("pres_ex_id", "p1")


def test_pages_run_newest_first_by_insertion_and_hold_still_while_records_arrive(store_factory):
    store = store_factory()
    checks = store.table("check", Check)
    for i in range(7):
        checks.put(f"c{i}", Check(check_id=f"c{i}"))
    store.table("other", Check).put("x", Check(check_id="x"))  # other kinds are not counted or listed

    first = checks.page(3)
    assert [c.check_id for c in first.items] == ["c6", "c5", "c4"] and first.total == 7 and first.next
    checks.put("c7", Check(check_id="c7"))  # a new record: before the first page, not within later ones
    checks.put("c2", Check(check_id="c2", pres_ex_id="p2"))  # an update keeps the record's place
    second = checks.page(3, after=first.next)
    assert [(c.check_id, c.pres_ex_id) for c in second.items] == [("c3", None), ("c2", "p2"), ("c1", None)]
    last = checks.page(3, after=second.next)
    assert [c.check_id for c in last.items] == ["c0"] and last.next is None and last.total == 8
    assert [c.check_id for c in checks.page(200).items] == ["c7", "c6", "c5", "c4", "c3", "c2", "c1", "c0"]
    assert checks.page(8).next is None and checks.page(7).next is not None

    checks.delete("c3")  # a deleted record's cursor still leads on
    assert [c.check_id for c in checks.page(2, after=checks.page(4).next).items] == ["c2", "c1"]


def test_a_cursor_belongs_to_its_list(store_factory):
    store = store_factory()
    checks, others = store.table("check", Check), store.table("other", Check)
    for i in range(3):
        checks.put(f"c{i}", Check(check_id=f"c{i}"))
        others.put(f"o{i}", Check(check_id=f"o{i}"))
    cursor = checks.page(1).next
    with pytest.raises(InvalidCursor):
        others.page(1, after=cursor)
    # check:-1, check:x, long, check:9223372036854775808 (2**63, past any position)
    for garbage in ("", "!!!", "Y2hlY2s6LTE", "Y2hlY2s6eA", "Y2hlY2s6" + "OTk5" * 10, "Y2hlY2s6OTIyMzM3MjAzNjg1NDc3NTgwOA"):
        with pytest.raises(InvalidCursor):
            checks.page(1, after=garbage)


def test_a_page_is_read_from_the_kind_index_without_sorting(store_factory):
    store = store_factory()
    position = store.dialect.position
    query = plan(store, f"SELECT {position}, doc FROM records WHERE kind=? AND {position}<? "
                        f"ORDER BY {position} DESC LIMIT ?", ("check", 10, 3))
    sorting = {"sqlite": "TEMP B-TREE", "postgresql": "Sort"}[store.dialect.name]
    assert "records_by_kind" in query and sorting not in query, query


def test_a_record_the_model_cannot_read_is_set_aside_not_fatal(store_factory):
    """A record written under looser rules (or damaged) never stops a list or the controller."""
    from pydantic import BaseModel, Field

    from erx_core.store import UnreadableRecord

    class Strict(BaseModel):
        code: str = Field(pattern=r"^[A-Z0-9]+$")
        state: str = "open"

    store = store_factory()
    table = store.table("thing", Strict, indexed=("state",))
    table.put("good", Strict(code="M01AE01"))
    store.execute("INSERT INTO records (kind, id, updated, doc) VALUES ('thing', 'bad', 0, ?)",
                  ('{"code": "M01  AE01", "state": "open"}',))
    assert [t.code for t in table.all()] == ["M01AE01"]
    assert [t.code for t in table.find_all("state", "open")] == ["M01AE01"]
    assert [t.code for t in table.page(10).items] == ["M01AE01"]
    with pytest.raises(UnreadableRecord) as unreadable:
        table.get("bad")
    assert unreadable.value.record_id == "bad"
    assert list(store.unreadable()) == ["thing bad"] and "code" in store.unreadable()["thing bad"]
    table.put("bad", Strict(code="M01AE01"))  # mended by the operator: readable again
    assert table.get("bad").code == "M01AE01" and store.unreadable() == {}


def test_transactions_nest_and_their_callbacks_wait_for_the_outermost(store_factory):
    store = store_factory()
    checks = store.table("check", Check, indexed=("pres_ex_id",))
    woken: list[str] = []
    store.after_transaction(lambda: woken.append("now"))  # no transaction open: at once
    assert woken == ["now"] and not store.in_transaction

    with pytest.raises(RuntimeError):
        with store.transaction():
            checks.put("gone", Check(check_id="gone"))
            store.after_transaction(lambda: woken.append("rolled back"))
            assert store.in_transaction and woken == ["now"]
            raise RuntimeError("the caller changed its mind")
    assert checks.get("gone") is None and woken == ["now", "rolled back"] and not store.in_transaction

    with store.transaction():
        checks.put("kept", Check(check_id="kept", pres_ex_id="p1"))
        with pytest.raises(ValueError):
            with store.transaction():  # a savepoint: rolls back alone
                checks.put("inner", Check(check_id="inner"))
                checks.delete("kept")
                raise ValueError("inner block failed")
        with store.transaction():
            checks.put("nested", Check(check_id="nested"))
            store.after_transaction(lambda: woken.append("committed"))
        assert woken == ["now", "rolled back"]  # not before the outermost block ends
    assert woken == ["now", "rolled back", "committed"]
    assert [c.check_id for c in checks.all()] == ["nested", "kept"]

    # what was committed is there for the next connection (a restarted controller)
    store.close()
    again = store_factory().table("check", Check, indexed=("pres_ex_id",))
    assert again.find("pres_ex_id", "p1") == Check(check_id="kept", pres_ex_id="p1")
    assert [c.check_id for c in again.page(10).items] == ["nested", "kept"]
